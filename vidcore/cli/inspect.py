"""``vidcore inspect PATH``: architecture, format, parameters, dtypes, files and key conversion of a model, or of
each model of a pipeline folder."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import VidcoreError
from .common import EXIT_OK, EXIT_USAGE, file_dtypes, human_bytes, one_line


def add_parser(commands) -> None:
    insp = commands.add_parser("inspect", help="show what a model or pipeline folder contains",
                               description="Show architecture, format, parameters, dtypes, files and the "
                                           "key conversion of a model (or of each model of a pipeline).")
    insp.add_argument("path", metavar="PATH", help="model folder, pipeline folder, native file or hub repo id")
    insp.add_argument("--subfolder", default=None, help="component of a pipeline folder, e.g. unet")
    insp.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    insp.set_defaults(func=run)


def _describe_model(path, subfolder: str | None, variant: str | None, indent: str = "") -> list[str]:
    from ..loading import BY_NAME, load_model_with_info

    module, info = load_model_with_info(path, subfolder=subfolder, variant=variant)
    params = sum(p.numel() for p in module.parameters())
    arch = BY_NAME[info.architecture]
    files = [(f, f.stat().st_size) for f in info.files]
    counts = file_dtypes(info.files)
    lines = [
        f"architecture:  {info.architecture} (diffusers class {arch.diffusers_class})",
        f"format:        {info.source_format}",
        f"parameters:    {params / 1e6:,.1f} M",
        f"dtypes:        {', '.join(f'{name} ({n} tensors)' for name, n in counts.most_common())}",
        f"files:         {len(files)}, {human_bytes(sum(s for _, s in files))}",
    ]
    lines += [f"  {f}  {human_bytes(s)}" for f, s in files]
    if info.report is None:
        lines.append("conversion:    none (native file: keys and shapes match the module as stored)")
    else:
        summary = info.report.summary().splitlines()
        lines.append(f"conversion:    {summary[0]}")
        lines += summary[1:]  # "  count  rule" lines
    return [indent + line for line in lines]


def _pipeline_components(root: Path) -> tuple[str | None, dict[str, list]]:
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    comps = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    return index.get("_class_name"), comps


def _loadable_component(folder: Path) -> bool:
    from ..loading import BY_DIFFUSERS

    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") in BY_DIFFUSERS
    except (OSError, ValueError, AttributeError):
        return False


def run(args) -> int:
    from .. import hub

    root = hub.resolve(args.path)
    if args.subfolder or root.is_file() or not (root / "model_index.json").is_file():
        print(f"path:          {root / args.subfolder if args.subfolder else root}")
        print("\n".join(_describe_model(root, args.subfolder, args.variant)))
        return EXIT_OK

    class_name, comps = _pipeline_components(root)
    print(f"pipeline:      {class_name or '?'} ({root})")
    status = EXIT_OK
    others = []
    for name, spec in comps.items():
        library, cls = (spec + [None, None])[:2]
        if cls is None:
            others.append(f"  {name}: (none)")
        elif _loadable_component(root / name):
            print(f"[{name}]  {library}.{cls}")
            try:
                print("\n".join(_describe_model(root, name, args.variant, indent="  ")))
            except VidcoreError as err:  # report a broken component, go on with the others
                print(f"  error: {one_line(err)}")
                status = EXIT_USAGE
        else:
            others.append(f"  {name}: {library}.{cls}")
    if others:
        print("other components:")
        print("\n".join(others))
    return status
