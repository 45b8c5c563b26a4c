"""`migrate`: the whole migration of a legacy model, the function behind `edgetrunc migrate`.

In order: check the paths, read the config without running anything, refuse stored code
unless trusted, load (`edgetrunc.legacy`), probe every Lambda (`probe`), rebuild with
`Truncation` (`rewrite`), verify against the legacy model (`verify`), count TFLite ops
(`op_inventory`), carry the compile config, write atomically and reload the written file.
"""

from __future__ import annotations

from pathlib import Path

from edgetrunc import _log
from edgetrunc._io import atomic_path, resolve_path
from edgetrunc.errors import CheckFailed, InputError, InputErrors, first_line
from edgetrunc.legacy import (
    FORMAT_NAMES,
    count_stored_functions,
    find_lambda_configs,
    functions_stored_by_name,
    is_graph_model,
    lambda_globals,
    load_custom_objects,
    lambda_layers,
    load_legacy,
    load_legacy_model,
    map_config_layers,
    missing_global_names,
    read_model_config,
    require_model_file,
)
from edgetrunc.legacy.custom import custom_objects_scope, needed_names
from edgetrunc.legacy.weights import stored_layer_weights
from edgetrunc.migrate.elementwise import probe_elementwise
from edgetrunc.migrate.op_inventory import inventory_or_error, op_inventory_change
from edgetrunc.migrate.original import compare_with_original
from edgetrunc.migrate.probe import probe_lambda
from edgetrunc.migrate.rewrite import replace_lambdas
from edgetrunc.migrate.verify import max_diff, model_outputs, sample_inputs, verify_outputs


def migrate(legacy_path, out_path, trust_lambda=False, *, extra_globals=None,
            truncation_classes=None, op_inventory=True, seed=0, custom_objects=None) -> dict:
    """Bring a legacy model to a Keras 3 `.keras` with `Truncation` layers; return a report.

    Without `trust_lambda` a file that stores lambdas is refused (InputError, nothing
    written): loading it would run code from the file. With trust, the model is loaded
    with `safe_mode=False` and the lambdas see `lambda_globals(extra_globals)`; every
    Lambda is probed (`probe_lambda`), clip-like ones become `Truncation(lower/upper or
    threshold, gradient)` under the same name, the result is verified against the legacy
    model (`verify_outputs`), reloaded with `safe_mode=True` when no Lambda remains, and
    written atomically to `out_path` (never over the input). A failed verification raises
    CheckFailed and writes nothing.

    Layers Keras 3 cannot build are mapped before loading (`map_config_layers`): tf.keras
    2 `tf.clip_by_value` and `tf.minimum(tf.maximum(...))` op layers always, a user's
    own class only when named in `truncation_classes` (`{class: threshold or None}`),
    checked against its code when `custom_objects` (a dict, or the path of the user's own
    `.py` file, which is then run) or Keras holds it; the written file needs them to load.
    A Keras 2 file (`.h5`, a `.keras` written by tf.keras 2, a tf.keras 2 SavedModel
    folder) is always written as a Keras 3 `.keras`; a Keras 3 `.keras` with nothing to
    replace is not written.

    Report keys: legacy, out, written, format, lambda_globals, layers (one per Lambda or
    mapped layer: layer, verdict, lower, upper, gradient, exact, max_probe_error,
    nonfinite, note, replaced), kept (non-clip Lambdas left in place), verification,
    safe_mode, tflite_ops, compile (whether the training configuration was carried),
    message.
    """
    legacy_path, out_path = _check_paths(legacy_path, out_path)
    custom_objects = load_custom_objects(custom_objects)
    file_format, config = read_model_config(legacy_path)
    lambda_configs = find_lambda_configs(config)
    has_code = bool(lambda_configs or count_stored_functions(config))
    report = {"legacy": str(legacy_path), "out": str(out_path), "written": False,
              "format": file_format, "lambda_globals": [], "layers": [], "kept": [],
              "verification": None, "safe_mode": None, "tflite_ops": None, "compile": None,
              "message": ""}
    _refuse_blockers(legacy_path, file_format, config, lambda_configs, has_code, trust_lambda,
                     extra_globals, truncation_classes, custom_objects)
    if has_code:
        report["lambda_globals"] = _trusted_globals(legacy_path, config, lambda_configs,
                                                    trust_lambda, extra_globals)
    legacy, mapped = _load(legacy_path, has_code, extra_globals, truncation_classes,
                           lambda_configs, custom_objects)
    report["layers"] = [m.to_dict() for m in mapped]
    converted = file_format != "keras"
    if not has_code and not mapped and not converted:
        report["safe_mode"] = "loads with safe_mode=True; no trust needed"
        report["message"] = "no Lambda layers: nothing to migrate; nothing written"
        return report
    if not is_graph_model(legacy):
        raise InputError(f"{legacy_path}: a subclassed {type(legacy).__name__} cannot be "
                         "rebuilt; expected a Functional or Sequential model")
    verdicts, replaced = _probe_lambdas(legacy, report, seed)
    rewritten = [v for v in verdicts.values() if hasattr(v, "replacement")]
    if not replaced and not rewritten and not mapped and not converted:
        report["message"] = "no Lambda behaves like a clip: nothing to migrate; nothing written"
        return report

    migrated = replace_lambdas(legacy, verdicts) if replaced or rewritten else legacy
    original = compare_with_original(legacy_path, migrated, mapped, has_code, extra_globals,
                                     custom_objects, seed)
    _verify(legacy_path, legacy, migrated, replaced, mapped, report, op_inventory, seed,
            original)
    report["compile"] = _carry_compile_config(legacy_path, file_format, config, migrated)
    _write(migrated, legacy_path, out_path, report, extra_globals, seed, custom_objects)
    report["message"] = _summary(file_format, converted, replaced, mapped, report["kept"],
                                 rewritten)
    return report


def _check_paths(legacy_path, out_path):
    legacy = require_model_file(legacy_path, savedmodel=True)
    out = Path(out_path)
    if out.suffix.lower() != ".keras":
        raise InputError(f"{out}: the migrated model is saved as .keras; got "
                         f"'{out.suffix or 'no suffix'}'")
    if resolve_path(out) == legacy.resolve() or (out.exists() and out.samefile(legacy)):
        raise InputError(f"{out}: is the legacy input; choose another output, out=NEW.keras "
                         "(the input is never overwritten)")
    if out.is_dir():
        raise InputError(f"{out}: is a directory, expected a .keras file path")
    return legacy, out


def _refusal(path, names, stored):
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    what = (f"{len(names)} Lambda layer(s) ({shown})" if names
            else f"{stored} stored Python function(s)")
    return (f"{path}: contains {what}; loading them runs Python code stored in the file. "
            "If you trust its source, re-run with trust_lambda=True")


def _refuse_blockers(legacy_path, file_format, config, lambda_configs, has_code, trust_lambda,
                     extra_globals, truncation_classes, custom_objects=None):
    """Raise `InputErrors` naming every blocker of the file at once, one line each with the
    file name and what to pass: global names the lambdas read that nobody gives, classes,
    activation functions and op layers Keras 3 does not know. Untrusted stored code is refused
    first, from the config alone (deciding which classes Keras knows imports Keras)."""
    if has_code and not trust_lambda:  # refused from the config alone, nothing imported
        names = [c.get("name", "?") for c in lambda_configs]
        raise InputError(_refusal(legacy_path, names, count_stored_functions(config)))
    lines = []
    if has_code:
        namespace = lambda_globals(extra_globals)
        for lambda_config in lambda_configs:
            missing = missing_global_names(lambda_config, namespace)
            if missing:
                lines.append(f"{legacy_path}: {_missing_globals_line(lambda_config, missing)}")
    try:
        with custom_objects_scope(custom_objects):
            map_config_layers(config, truncation_classes, custom_objects=custom_objects,
                              layer_weights=stored_layer_weights(legacy_path, file_format, config))
    except InputErrors as exc:
        lines += [f"{legacy_path}: {line}" for line in exc.lines]
    except InputError as exc:
        lines.append(f"{legacy_path}: {exc}")
    if len(lines) > 1:
        raise InputErrors(lines)


def _missing_globals_line(lambda_config, missing) -> str:
    return (f"layer '{lambda_config.get('name', '?')}': its lambda reads the global name(s) "
            f"{', '.join(sorted(missing))}, which the file does not store (globals of the script "
            "that saved it); give them with --define NAME=VALUE")


def _trusted_globals(legacy_path, config, lambda_configs, trust_lambda, extra_globals) -> list:
    """The names given to stored lambdas; refuses untrusted code and unknown global names."""
    if not trust_lambda:
        names = [c.get("name", "?") for c in lambda_configs]
        raise InputError(_refusal(legacy_path, names, count_stored_functions(config)))
    namespace = lambda_globals(extra_globals)
    for lambda_config in lambda_configs:
        missing = missing_global_names(lambda_config, namespace)
        if missing:
            raise InputError(_missing_globals_line(lambda_config, missing))
    _log.info(f"loading {legacy_path} with safe_mode=False (--trust-lambda)")
    return sorted(k for k in namespace if not k.startswith("__"))


def _load(legacy_path, has_code, extra_globals, truncation_classes, lambda_configs,
          custom_objects=None):
    """`(legacy model, [MappedLayer])`; a function stored by name only is named on failure."""
    try:
        legacy, _, mapped = load_legacy(legacy_path, trust_lambda=has_code,
                                        extra_globals=extra_globals,
                                        truncation_classes=truncation_classes,
                                        custom_objects=custom_objects)
    except InputError:
        by_name = functions_stored_by_name(lambda_configs)
        if not by_name:
            raise
        layer, function, module = by_name[0]
        raise InputError(
            f"{legacy_path}: layer '{layer}' stores its function '{function}' by name only "
            f"(module {module}), not its code, and it cannot be found here; load the model "
            f"where '{function}' is importable or registered") from None
    return legacy, mapped


def _probe_lambdas(legacy, report, seed):
    """Probe every Lambda; return `({id(layer): verdict}, [(layer, clip verdict)])`."""
    found = lambda_layers(legacy)
    verdicts, replaced = {}, []
    for layer, path in _log.progress(found, desc="probing Lambda layers", total=len(found)):
        verdict = probe_lambda(layer, name=path, seed=seed)
        if not verdict.is_clip:  # a common elementwise function becomes `Elementwise`
            verdict = probe_elementwise(layer, name=path, seed=seed) or verdict
        verdicts[id(layer)] = verdict
        report["layers"].append(verdict.to_dict())
        if verdict.is_clip:
            replaced.append((layer, verdict))
        elif not hasattr(verdict, "replacement"):
            report["kept"].append(path)
    return verdicts, replaced


def _verify(legacy_path, legacy, migrated, replaced, mapped, report, op_inventory, seed,
            original=None):
    """Fill the verification and op inventory; raise CheckFailed when verification fails."""
    _log.info("verifying the migrated model against the legacy one")
    verification = verify_outputs(legacy, migrated, replaced, seed=seed)
    if mapped:
        verification["note"] = ("mapped layers are Truncation in both models: their legacy "
                                "code cannot run in Keras 3, so only the rest is compared")
    if original is not None:  # their code was given: the original model ran too
        verification["note"] = ("mapped layers were checked against their code, and the "
                                "migrated model against the original built with it")
        verification["original_code"] = original
        verification["failures"] += original["failures"]
        verification["passed"] = verification["passed"] and original["passed"] is not False
    report["verification"] = verification
    if op_inventory:
        _log.info("counting TFLite ops before and after")
        before = inventory_or_error(legacy)
        after = inventory_or_error(migrated) if replaced else before
        report["tflite_ops"] = op_inventory_change(before, after)
    if not verification["passed"]:
        raise CheckFailed(f"{legacy_path}: migration not written: "
                          + "; ".join(verification["failures"]))


def _write(migrated, legacy_path, out_path, report, extra_globals, seed, custom_objects=None):
    """Save atomically (never over the input) and check the written file reloads the same."""
    remaining = [path for _, path in lambda_layers(migrated)]
    with atomic_path(out_path, protect=[legacy_path]) as tmp:
        with _log.stdout_to_stderr():
            migrated.save(tmp)
        report["safe_mode"] = _check_reload(tmp, migrated, remaining, extra_globals, seed,
                                            custom_objects)
    report["written"] = True


def _summary(file_format, converted, replaced, mapped, kept, rewritten=()) -> str:
    done = []
    if converted:
        done.append(f"converted the {FORMAT_NAMES[file_format]} to a Keras 3 .keras")
    if replaced:
        done.append(f"replaced {len(replaced)} Lambda layer(s) with Truncation")
    if mapped:
        done.append(f"mapped {len(mapped)} layer(s) to Truncation")
    if rewritten:
        done.append(f"rewrote {len(rewritten)} elementwise Lambda layer(s) as Elementwise")
    if kept:
        done.append(f"kept {len(kept)} other Lambda layer(s)")
    return "; ".join(done)


def _carry_compile_config(path, file_format, config, migrated):
    """Re-compile the migrated model like the legacy one; say what was carried."""
    if file_format == "savedmodel":
        return None
    if file_format == "tf-keras":
        if not config.get("compile_config"):
            return None
        return "not carried from a tf.keras 2 file; compile the model again to train it"
    if file_format == "keras":
        compile_config = config.get("compile_config")
        if not compile_config:
            return None
        try:
            migrated.compile_from_config(compile_config)
        except Exception as exc:
            return f"not carried ({first_line(exc)}); compile the model again to train it"
        return "carried (optimizer, loss, metrics); optimizer state is not"
    import h5py

    with h5py.File(path, "r") as handle:
        if "training_config" not in handle.attrs:
            return None
    return "not carried from a legacy .h5; compile the model again to train it"


def _check_reload(path, migrated, remaining, extra_globals, seed, custom_objects=None):
    """Reload the written file (safe mode when no Lambda remains) and compare outputs."""
    if custom_objects is not None and not needed_names(read_model_config(path)[1]):
        custom_objects = None  # the written file no longer needs the user's code
    with_objects = (f" and --custom-objects {custom_objects.source}"
                    if custom_objects is not None else "")
    if remaining:
        reloaded = load_legacy_model(path, trust_lambda=True, extra_globals=extra_globals,
                                      custom_objects=custom_objects)
        status = (f"still needs --trust-lambda: {len(remaining)} non-clip Lambda layer(s) "
                  f"remain ({', '.join(remaining)})")
    else:
        try:
            reloaded = load_legacy_model(path, trust_lambda=False, custom_objects=custom_objects)
        except InputError as exc:
            raise CheckFailed(f"migrated model does not load with safe_mode=True: {exc}") from None
        status = "loads with safe_mode=True" + with_objects
    arrays = next(iter(sample_inputs(migrated, seed).values()))
    diff = max_diff(model_outputs(reloaded, arrays), model_outputs(migrated, arrays))
    if diff != 0.0:
        raise CheckFailed(f"the saved migrated model differs from the one in memory by {diff:g}")
    return status
