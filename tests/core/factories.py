"""Small builders for records used across the core tests."""

from megatron_zppo.core.records import STUDENT, TEACHER, Group, PromptKind, Question, Sample


def question(qid="q0", text="What is 2+3?", answer="5"):
    return Question(id=qid, text=text, answer=answer)


def sample(q, group_id, reward, text=None, kind=PromptKind.PLAIN, by=STUDENT, n_tokens=3):
    text = text if text is not None else f"<think>...</think> \\boxed{{{'5' if reward else 'x' + group_id}}}"
    return Sample(
        question_id=q.id, group_id=group_id, kind=kind, prompt_ids=[1, 2], response_ids=list(range(n_tokens)),
        response_text=text, logprobs=[-0.5] * n_tokens, sampled_by=by, reward=reward,
    )


def group(q, rewards, gid=None, texts=None, kind=PromptKind.PLAIN):
    gid = gid or f"{q.id}:plain"
    texts = texts or [None] * len(rewards)
    return Group(gid, q, kind, q.text, [sample(q, gid, r, t, kind) for r, t in zip(rewards, texts)])


def teacher(q, rewards, texts=None):
    texts = texts or [f"teacher {i} \\boxed{{{'5' if r else 'T' + str(i)}}}" for i, r in enumerate(rewards)]
    return [sample(q, f"{q.id}:teacher", r, t, by=TEACHER) for r, t in zip(rewards, texts)]
