"""Make docs/dashboard.svg: the real dashboard training a small model for a while.

    python docs/screenshot.py data/tiny_shakespeare_train.bin --steps 120
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import tui_llm  # noqa: F401  (thread settings first)
from tui_llm.app import TrainerApp
from tui_llm.engine.training.trainer import RunConfig, Trainer


async def shoot(args) -> None:
    config = RunConfig(train_file=args.train, model=args.model, steps=args.steps, val_every=10,
                       sample_every=40, sample_len=48, top_k=40, temperature=0.9, save_every=0,
                       lr=args.lr, out_dir=args.out_dir)
    app = TrainerApp(Trainer(config))
    async with app.run_test(size=(args.width, args.height)) as pilot:
        while app.phase != "finished":
            await pilot.pause(1.0)
        await pilot.pause(1.0)
        app.save_screenshot(filename=Path(args.output).name, path=str(Path(args.output).parent))
        await pilot.press("q")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train", nargs="?", default="data/tiny_shakespeare_train.bin")
    p.add_argument("--model", default="d4")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=120)
    p.add_argument("--height", type=int, default=36)
    p.add_argument("--out-dir", default="/tmp/tui_llm_screenshot_run")
    p.add_argument("--output", default=str(Path(__file__).parent / "dashboard.svg"))
    asyncio.run(shoot(p.parse_args()))


if __name__ == "__main__":
    main()
