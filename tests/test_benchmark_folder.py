"""experiments/benchmark_folder.py at tiny sizes: the folders it writes and the numbers it reports."""

import importlib.util
import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    path = os.path.join(ROOT, "experiments", "benchmark_folder.py")
    spec = importlib.util.spec_from_file_location("benchmark_folder", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_folder"] = module
    spec.loader.exec_module(module)
    return module


benchmark_folder = _load()


def test_large_jpegs_and_the_timing_of_a_folder(tmp_path):
    folder = str(tmp_path / "jpeg")
    benchmark_folder.write_large_jpegs(folder, count=6, size=(96, 64))
    names = sorted(os.listdir(folder))
    assert names == [f"{i:04d}.jpg" for i in range(6)]
    with Image.open(os.path.join(folder, names[0])) as image:
        assert (image.format, image.size, image.mode) == ("JPEG", (96, 64), "RGB")
    result = benchmark_folder.time_folder(folder, image_size=16, batch_size=4, batches=2, warmup_batches=1)
    assert result["images"] == 6
    assert result["images_per_s"] > 0 and result["cores"] > 0 and result["scan_s"] >= 0
    assert abs(result["images_per_cpu_s"] * result["cores"] - result["images_per_s"]) < 1e-6 * result[
        "images_per_s"]
