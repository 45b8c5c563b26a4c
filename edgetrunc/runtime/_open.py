"""Opening an artifact: the runner for a file, through its format's descriptor (no TensorFlow)."""

from __future__ import annotations

from edgetrunc.errors import InputError
from edgetrunc.runtime import formats
from edgetrunc.runtime._base import BaseRunner
from edgetrunc.runtime.formats import RunnerOptions


def open_runner(path, threads: int | None = None, options: RunnerOptions | None = None,
                **runner_kwargs) -> BaseRunner:
    """Create the runner for `path`, chosen by its format (`edgetrunc.runtime.formats`).

    `options` (a `RunnerOptions`) say how it runs; `threads` overrides `options.threads`.
    `runner_kwargs` go to the runner class as they are (its own keywords, e.g.
    `use_xnnpack=False` for TFLite). A missing, empty or corrupt file, or a suffix no format
    has, raises `InputError`.
    """
    fmt = formats.for_path(path, runnable=True)
    options = options or RunnerOptions()
    if threads is not None:
        options = options.updated(threads=threads)
    kwargs = {**fmt.runner_kwargs(options), **runner_kwargs}
    try:
        return fmt.runner_class()(path, **kwargs)
    except TypeError as exc:
        raise InputError(f"{path}: unsupported runner option ({exc})") from None


def open_with_intermediates(path, threads: int | None = None) -> BaseRunner:
    """A runner of `path` that keeps every intermediate tensor of its last `infer`
    (`runner.intermediates()`), with its format's options for that (TFLite runs its built-in
    kernels here: XNNPACK keeps its intermediates to itself)."""
    fmt = formats.for_path(path, runnable=True)
    if not fmt.intermediates:
        raise InputError(f"{path}: a {fmt.name} runner keeps no intermediate tensors")
    options = RunnerOptions(threads=threads, keep_tensors=True).updated(**fmt.intermediate_options)
    return open_runner(path, options=options)
