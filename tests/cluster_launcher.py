"""What KFP's launcher does in a pod, for one component, so a test can run each step as a cluster would.

``python tests/cluster_launcher.py SPEC.json`` in an empty working directory: downloads the step's input
artifacts from the object store, builds the typed artifact objects with local paths, calls the real
component function (``sora_components.<name>.python_func``), uploads its output artifacts and writes the
outputs (return value, artifact metadata) as JSON to ``spec["result"]``. Nothing is shared with other
steps but URIs and the environment the test gives the process.
"""

import inspect
import json
import sys
import typing
from pathlib import Path


def _artifact_class(annotation):
    args = typing.get_args(annotation)
    return args[0] if args else annotation


def main(spec_path: str) -> int:
    import fsspec
    import sora_components

    from sora.data import storage

    spec = json.loads(Path(spec_path).read_text())
    comp = getattr(sora_components, spec["component"])
    func = comp.python_func
    params = inspect.signature(func).parameters
    kwargs = dict(spec.get("params", {}))
    work = Path.cwd()
    outputs = {}
    for name, uri in spec.get("inputs", {}).items():
        fs, path = fsspec.core.url_to_fs(uri)
        local = work / "inputs" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        if fs.isdir(path):
            with storage.local_dir(uri) as d:
                import shutil

                shutil.copytree(d, local)
        else:
            local.write_bytes(storage.read_bytes(uri))
        kwargs[name] = _artifact_class(params[name].annotation)(name=name, uri=str(local))
    for name in spec.get("outputs", {}):
        local = work / "outputs" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        outputs[name] = kwargs[name] = _artifact_class(params[name].annotation)(name=name, uri=str(local))
    returned = func(**kwargs)
    result = {"return": list(returned) if isinstance(returned, tuple) else returned, "metadata": {}}
    for name, artifact in outputs.items():
        local = Path(artifact.path)
        target = spec["outputs"][name]
        if local.is_dir():
            storage.put_dir(local, target)
        elif local.exists():
            storage.write_bytes(target, local.read_bytes())
        result["metadata"][name] = artifact.metadata
    storage.write_text(spec["result"], json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
