"""The one error type the main job reports as a single line (and exit code 2) instead of a trace.

A `RunError` is a problem with what the user gave the run — its config, data, templates, graders,
checkpoints or servers — that they can fix: its message names the file, field or server, the value
found and what was expected. Anything else is a bug of ours and keeps its traceback.
"""


class RunError(Exception):
    pass
