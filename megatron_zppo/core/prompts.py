"""Prompt text for every prompt kind, from editable template files.

Templates are plain text with `{name}` placeholders. The defaults in `templates/` are this
project's own wording; point `PromptTemplates.load(directory)` at a folder with the same four
files to use other wording (for example the paper's). The Hint baselines' templates and NCQ's
no-answer wording are optional in such a folder: the package's own are used where they are missing. Placeholders are filled in one pass, so a
question or candidate that happens to contain `{candidates}` is never expanded a second time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from megatron_zppo.core.answers import last_boxed
from megatron_zppo.errors import RunError

DEFAULT_DIR = Path(__file__).parents[1] / "templates"  # megatron_zppo/templates/

# Placeholders each template must contain, and the only ones it may contain.
REQUIRED = {
    "closer": set(),
    "bcq": {"question", "candidates"},
    "ncq": {"question", "candidates", "wrong_answers"},
    "compress": {"response"},
}
OPTIONAL = {
    "hint_request": {"question", "response"},  # asks the teacher for an answer-free hint from its correct response
    "question_hint_request": {"question"},  # the same from the question alone (a departure, method question_hint)
    "hint": {"question", "hint"},  # the student's prompt with the hint
    "ncq_no_answers": {"question", "candidates"},  # NCQ when no wrong rollout stated a final answer
}
_PLACEHOLDER = re.compile(r"\{(question|candidates|wrong_answers|response|hint)\}")


class TemplateError(RunError, ValueError):
    pass


@dataclass(frozen=True)
class PromptTemplates:
    closer: str
    bcq: str
    ncq: str
    compress: str
    hint_request: str = ""
    question_hint_request: str = ""
    hint: str = ""
    ncq_no_answers: str = ""

    @classmethod
    def load(cls, directory: str | Path = DEFAULT_DIR) -> PromptTemplates:
        directory = Path(directory)
        texts = {}
        for name, needed in {**REQUIRED, **OPTIONAL}.items():
            path = directory / f"{name}.txt"
            if name in OPTIONAL and not path.is_file():
                path = DEFAULT_DIR / path.name
            if not path.is_file():
                raise TemplateError(f"prompt template {path} is missing (need {sorted(REQUIRED)} .txt files)")
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise TemplateError(f"prompt template {path} cannot be read as UTF-8 text: {e}") from None
            found = set(_PLACEHOLDER.findall(text))
            if found != needed:
                moved = (" (before 2026-12-07 this file asked for a hint from the question alone; that wording is "
                         "now question_hint_request.txt)" if name == "hint_request" and found == {"question"} else "")
                raise TemplateError(
                    f"prompt template {path}: placeholders {sorted(found)} found, expected exactly "
                    f"{sorted(needed)} (written as {{name}}){moved}"
                )
            texts[name] = text
        return cls(**texts)

    def plain(self, question: str) -> str:
        return f"{question}\n\n{self.closer}"

    def bcq_prompt(self, question: str, candidates: list[str]) -> str:
        """`candidates` are already in their shown order; the caller shuffles them."""
        if len(candidates) != 2:
            raise ValueError(f"a BCQ prompt takes exactly 2 candidates, got {len(candidates)}")
        body = _fill(self.bcq, question=question, candidates=_candidate_block(candidates))
        return f"{body}\n\n{self.closer}"

    def ncq_prompt(self, question: str, candidates: list[str], wrong_answers: list[str]) -> str:
        if not candidates:
            raise ValueError("an NCQ prompt needs at least one wrong candidate")
        if not wrong_answers:  # nothing to list: its own wording, not "answers (none stated) are incorrect"
            body = _fill(self.ncq_no_answers, question=question, candidates=_candidate_block(candidates))
        else:
            listed = ", ".join(f"\\boxed{{{a}}}" for a in wrong_answers)
            body = _fill(self.ncq, question=question, candidates=_candidate_block(candidates), wrong_answers=listed)
        return f"{body}\n\n{self.closer}"

    def hint_request_prompt(self, question: str, response: str | None = None) -> str:
        """From the teacher's correct `response` (the paper's Hint), or the question alone (None)."""
        if response is None:
            return _fill(self.question_hint_request, question=question)
        return _fill(self.hint_request, question=question, response=response.strip())

    def hint_prompt(self, question: str, hint: str) -> str:
        return f"{_fill(self.hint, question=question, hint=hint.strip())}\n\n{self.closer}"

    def compress_prompt(self, response: str) -> str:
        return _fill(self.compress, response=response)


def _fill(template: str, **values: str) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _candidate_block(candidates: list[str]) -> str:
    return "\n\n".join(f"<candidate>\n{c.strip()}\n</candidate>" for c in candidates)


_SUMMARY = re.compile(r"<summary>(.*?)</summary>", re.DOTALL)


def parse_summary(output: str, original: str) -> tuple[str, bool]:
    """The teacher's summary of `original`, or `original` itself if the summary is unusable.

    Unusable means no `<summary>` tags, an empty summary, or a final answer that differs from
    the original's: a compressed candidate must keep the answer verbatim, otherwise a wrong
    candidate could turn right (or a right one wrong) on the way into the prompt.
    Returns (text, used_summary).
    """
    m = _SUMMARY.search(output)
    summary = m.group(1).strip() if m else ""
    if not summary or last_boxed(summary) != last_boxed(original):
        return original, False
    return summary, True


class PromptEncoder:
    """Prompt text (and its number of images and videos) -> token ids with the model's tokenizer and
    chat template; for a vision-language model also how many prompt tokens its images and videos
    take once each placeholder is expanded (what length limits must count)."""

    def __init__(self, tokenizer, image_processor=None, video_processor=None, video_tokens=None):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.video_processor, self.video_token_ids = video_processor, video_tokens

    def __call__(self, text: str, n_images: int = 0, n_videos: int = 0, history=()) -> list[int]:
        return encode_prompt(self.tokenizer, text, n_images, n_videos, history)

    def image_tokens(self, images) -> int:
        if not images or self.image_processor is None:
            return len(images)  # a text model: nothing is expanded
        from megatron_zppo.images import vision_token_counts

        return sum(vision_token_counts(self.image_processor, images))

    def video_tokens(self, videos) -> int:
        """Tokens the videos' placeholders become: per temporal patch of sampled frames, its
        timestamp text, vision start/end and the frame's vision tokens. The frames are sampled and
        processed for it (a video's header does not say what its frames decode to)."""
        if not videos or self.video_processor is None:
            return len(videos)
        from megatron_zppo.videos import video_inputs

        return sum(map(len, video_inputs(self.video_processor, self.tokenizer, self.video_token_ids, videos)[1]))


def encode_prompt(tokenizer, text: str, n_images: int = 0, n_videos: int = 0, history=()) -> list[int]:
    """Token ids of a user prompt ready for generation: the chat template when the tokenizer has one.

    With images, the user turn is the chat template's image entries then the text, so the ids hold
    the model's image placeholder once per image (the engine expands each to the image's patches);
    videos likewise, after the images. `history`: earlier turns of a conversation ({"role",
    "content"} each), placed before it through the same template."""
    if (n_images or n_videos or history) and not tokenizer.chat_template:
        raise ValueError(f"a prompt with {n_images} image(s), {n_videos} video(s) and {len(history)} earlier turn(s) "
                         "needs a chat template that places them; the tokenizer has none")
    if tokenizer.chat_template:
        media = [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos
        content = text if not media else media + [{"type": "text", "text": text}]
        ids = tokenizer.apply_chat_template([*map(dict, history), {"role": "user", "content": content}],
                                            add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    return tokenizer(text)["input_ids"]


def encode_media(encode, text: str, question) -> list[int]:
    """`text` encoded with one placeholder per image and video of `question` (the count of videos
    is passed only when there are some: plain callables that encode text and images keep working)."""
    q = question
    if getattr(q, "history", ()):  # a conversation: only encoders that take its turns are asked
        return encode(text, len(q.images), len(q.videos), history=q.history)
    return encode(text, len(q.images), len(q.videos)) if q.videos else encode(text, len(q.images))
