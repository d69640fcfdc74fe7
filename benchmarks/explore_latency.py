"""``mimkit explore``'s answer to a patch click: the HTTP round trip of ``POST /api/reconstruct`` with a
mask one patch different from the last (what the page sends when a patch is clicked), timed from the
request's start to its JSON answer decoded, the three pictures in it.

The run is the Fashion-MNIST recipe (configs/mae_fashion_mnist.yaml: ViT-Tiny, 7x7 patches of 4 px,
decoder 128 x 4): give a run directory, or the script pretrains one for ``--steps`` steps first (the
weights do not change the cost of a click). The explorer is served by uvicorn in a thread of this process
on a free port of 127.0.0.1, as ``mimkit explore`` serves it; the clicks go through the loopback.

    python benchmarks/explore_latency.py                          # pretrain 20 steps, then 50 clicks
    python benchmarks/explore_latency.py runs/mae_fmnist --clicks 100 --json explore.json
    python benchmarks/explore_latency.py runs/mae_fmnist --screenshot docs/explore.png   # + the docs' picture

Results, and the machine they were measured on: docs/explore.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _timing import cpu_name, cpu_seconds, peak_rss_mb, write_json  # noqa: E402

RECIPE = ROOT / "configs" / "mae_fashion_mnist.yaml"


def pretrain(steps: int, out: Path) -> Path:
    """The recipe for ``steps`` optimizer steps into ``out``."""
    from mimkit.cli import main

    args = ["pretrain", "--config", str(RECIPE), f"output_dir={out}", f"train.max_steps={steps}"]
    if main([*args, "train.progress=false", "train.tensorboard=false"]) != 0:
        raise SystemExit("pretraining failed")
    return out


def start_server(app) -> tuple[str, object, threading.Thread]:
    """``app`` served by uvicorn in a thread on a free port; returns its URL once it listens."""
    import uvicorn

    from mimkit.explore.app import open_socket

    sock = open_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def click(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + "/api/reconstruct", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def time_clicks(url: str, clicks: int, warmup: int, images: int) -> list[float]:
    """Seconds per click: each click hides or shows the next patch of the last answer's mask, on image
    ``i % images`` of the held-out split (a new image starts from a drawn 75% mask)."""
    times = []
    for i in range(warmup + clicks):
        index = (i // 7) % images  # seven clicks per image
        if i % 7 == 0:
            mask = click(url, {"split": "test", "index": index, "seed": 0, "ratio": 0.75})["mask"]
        mask[(5 * i) % len(mask)] ^= 1
        t = time.perf_counter()
        answer = click(url, {"split": "test", "index": index, "seed": 0, "mask": mask})
        elapsed = time.perf_counter() - t
        assert answer["mask"] == mask and {"masked", "reconstruction"} <= set(answer["panels"])
        if i >= warmup:
            times.append(elapsed)
    return times


def screenshot(url: str, path: Path, index: int) -> None:
    """The page in headless chromium on held-out image ``index``, two patches clicked, as a small PNG."""
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1180,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        driver.execute_script("choose('test', arguments[0])", index)
        time.sleep(2)
        canvas = driver.find_element(By.ID, "mask-grid")
        for row, col in ((3, 3), (3, 4)):  # two patches in the middle: hidden or shown
            before = driver.find_element(By.ID, "reconstruction").get_attribute("src")
            dx, dy = int((col + 0.5) * 32 - 112), int((row + 0.5) * 32 - 112)
            ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
            wait.until(lambda d, b=before: d.find_element(By.ID, "reconstruction").get_attribute("src") != b)
        time.sleep(1)
        bottom = "return document.querySelector('main').getBoundingClientRect().bottom"
        height = int(driver.execute_script(bottom))
        metrics = {"width": 1180, "height": min(height, 1400), "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the whole page, no scrollbar
        time.sleep(0.5)
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    picture = Image.open(path).convert("RGB")
    picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", help="a run of the recipe (default: pretrain one for --steps)")
    parser.add_argument("--steps", type=int, default=20, help="steps of the run pretrained without RUN")
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=8, help="held-out images the clicks go round")
    parser.add_argument("--screenshot", type=Path, help="also write the page's picture here")
    parser.add_argument("--screenshot-image", type=int, default=0, help="the held-out image it shows")
    parser.add_argument("--no-cache", action="store_true", help="embed the images anew (a cold start)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from mimkit.explore import ExploreOptions, Explorer
    from mimkit.explore.app import create_app

    with tempfile.TemporaryDirectory() as work:
        run = args.run or str(pretrain(args.steps, Path(work) / "run"))
        t, cpu = time.perf_counter(), cpu_seconds()
        explorer = Explorer(run, ExploreOptions(use_cache=not args.no_cache))
        startup, startup_cpu = time.perf_counter() - t, cpu_seconds() - cpu
        url, server, thread = start_server(create_app(explorer))
        times = time_clicks(url, args.clicks, args.warmup, args.images)
        if args.screenshot:
            screenshot(url, args.screenshot, args.screenshot_image)
        server.should_exit = True
        thread.join(timeout=30)
    ms = sorted(1000 * s for s in times)
    result = {
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "run": run,
        "startup_s": round(startup, 2),
        "startup_cpu_s": round(startup_cpu, 2),
        "embedded_images": explorer.bank.shape[0],
        "peak_rss_mb": round(peak_rss_mb()),
        "clicks": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
        "max_ms": round(ms[-1], 1),
    }
    print(
        f"{result['cpu']}, {result['torch_threads']} torch thread(s): a patch click answered in "
        f"{result['median_ms']:.0f} ms (median of {len(ms)}; 90% within {result['p90_ms']:.0f} ms, slowest "
        f"{result['max_ms']:.0f} ms); startup (run, images, {result['embedded_images']} embeddings) "
        f"{startup:.1f} s, {startup_cpu:.1f} s of CPU; peak RSS {result['peak_rss_mb']} MB"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
