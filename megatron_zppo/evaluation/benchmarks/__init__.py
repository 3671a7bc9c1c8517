"""One converter per benchmark of the paper's suite, from its public release's files to questions.

Importing the package registers them all (registry.CONVERTERS); `registry.convert(name, path)`
reads one. Families: vlm.py, vlm_math.py and vlm_docs.py (16 vision-language: general, maths,
charts/documents/OCR), text.py (10 language-only), video.py (5 video).
"""

from megatron_zppo.evaluation.benchmarks import text, video, vlm, vlm_docs, vlm_math  # noqa: F401
