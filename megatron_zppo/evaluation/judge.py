"""The judge of evaluation: any rollout engine (the teacher's SGLang server, an in-process model)
given a template filled with the question, its options, the reference and the response, read back
strictly.

Templates are text files with `{name}` placeholders, filled in one pass. The package's own
(`templates/judges/`) are this project's wording; a benchmark's official judge prompt can be used
instead by pointing the suite at a file holding it, with the form of its reply (`output`):

- verdict: JSON only, {"verdict": "correct" | "wrong"} (training's judge reads the same);
- score:   JSON only, {"score": x} with 0 <= x <= 1 (a graded judge such as MM-Vet's);
- number:  the reply is one number in [0, 1] and nothing else;
- yes_no:  a field `correct: yes` / `"correct": "no"` (HLE's official reply), else the last
           YES or NO in capitals (MultiChallenge's).

A reply that does not have its form scores 0 and is counted as malformed. `{response}` is the
student's final answer when one was extracted, else the end of its reasoning, said as such: the
judge then looks at the reasoning for an answer, as the paper's does.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.core.records import Question
from megatron_zppo.errors import RunError
from megatron_zppo.rollout.engine import GenerateRequest, RolloutEngine, SamplingParams
from megatron_zppo.teacher import parse_verdict

TEMPLATES_DIR = Path(__file__).parents[1] / "templates" / "judges"
# The package's templates and the form of their replies.
BUILTIN = {"answer": "verdict", "charxiv_reasoning": "verdict", "charxiv_descriptive": "verdict",
           "mmvet": "score", "hle": "verdict", "multichallenge": "verdict", "mmvu_open": "verdict"}
OUTPUTS = ("verdict", "score", "number", "yes_no")
# {response}: the final answer (or the reasoning's end when none was extracted); {reply}: what follows
# the reasoning (a conversation's reply); {full_response}: everything, reasoning included.
FIELDS = ("question", "options", "reference", "response", "reply", "full_response", "rubric")
SHOWN = ("response", "reply", "full_response")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(FIELDS) + r")\}")
REASONING_TAIL = 3000  # characters of reasoning shown when no final answer was extracted
_NUMBER = re.compile(r"\s*([01](?:\.\d+)?|\.\d+)\s*")
_YES_NO = re.compile(r"(?<!\w)[\"*]*correct[\"*]*\s*:\s*[\"*]*\s*(yes|no)\b", re.I)
_VERDICT_WORD = re.compile(r"\b(YES|NO)\b")


class JudgeError(RunError, ValueError):
    pass


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    text: str
    output: str

    @classmethod
    def load(cls, template: str, output: str = "") -> JudgeTemplate:
        """A package template by name, or a file path (then `output` says its reply's form)."""
        path = TEMPLATES_DIR / f"{template}.txt" if template in BUILTIN else Path(template)
        output = output or BUILTIN.get(template, "")
        if output not in OUTPUTS:
            raise JudgeError(f"judge template {template!r}: output {output!r} unknown; expected one of {OUTPUTS} "
                             f"(a template file needs judge_output)")
        if not path.is_file():
            raise JudgeError(f"judge template {path} is missing; expected one of {sorted(BUILTIN)} or a text file")
        text = path.read_text(encoding="utf-8").strip()
        if not any("{" + f + "}" in text for f in SHOWN):
            raise JudgeError(f"judge template {path}: it never shows the student's response (one of "
                             f"{', '.join('{' + f + '}' for f in SHOWN)}); placeholders it may use: "
                             f"{', '.join('{' + f + '}' for f in FIELDS)}")
        return cls(path.stem, text, output)

    def fill(self, q: Question, response: str) -> str:
        fields = {"question": q.text, "options": options_block(q), "reference": " | ".join(references(q)),
                  "response": shown_response(response), "reply": response.rsplit("</think>", 1)[-1].strip(),
                  "full_response": response, "rubric": str(q.metadata.get("rubric", ""))}
        return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], self.text)


def references(q: Question) -> list[str]:
    return [str(a) for a in q.metadata.get("answers") or [q.answer]]


def options_block(q: Question) -> str:
    options = q.metadata.get("options") or []
    return "\n".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(options)) or "(none)"


def shown_response(response: str) -> str:
    given = last_boxed(response)
    if given is not None:
        return given
    tail = response[-REASONING_TAIL:]
    return f"(no final answer was extracted; the response ends with:)\n{tail}"


def parse_output(text: str, output: str) -> float | None:
    """The judge's score in [0, 1], or None when the reply does not have the template's form."""
    if output == "verdict":
        v = parse_verdict(text)
        return None if v is None else float(v == "correct")
    if output == "number":
        m = _NUMBER.fullmatch(text)
        return float(m.group(1)) if m and float(m.group(1)) <= 1 else None
    if output == "yes_no":
        found = {m.group(1).lower() for m in _YES_NO.finditer(text)}
        if not found:  # a verdict given last, in capitals, after the reasoning
            words = _VERDICT_WORD.findall(text)
            found = {words[-1].lower()} if words else set()
        return float(found == {"yes"}) if len(found) == 1 else None
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or set(obj) != {"score"} or isinstance(obj["score"], bool):
        return None
    x = obj["score"]
    return float(x) if isinstance(x, (int, float)) and 0 <= x <= 1 else None


class EvalJudge:
    """Grades with a template through `engine` (greedy, at most `max_new_tokens`), counting malformed
    replies. `encode` is the judge's own tokenizer and chat template."""

    def __init__(self, engine: RolloutEngine, encode: Callable[..., list[int]], max_new_tokens: int = 512):
        self.engine, self.encode = engine, encode
        self.sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
        self.calls = self.malformed = 0

    def grade(self, template: JudgeTemplate, questions: Sequence[Question], responses: Sequence[str]) -> list[float]:
        reqs = [GenerateRequest(self.encode(template.fill(q, r)), 1, request_id=f"judge:{q.id}")
                for q, r in zip(questions, responses, strict=True)]
        gens = self.engine.generate(reqs, self.sampling) if reqs else []
        scores = []
        for (g,) in gens:
            s = parse_output(g.text, template.output)
            self.calls += 1
            self.malformed += s is None
            scores.append(0.0 if s is None else s)
        return scores
