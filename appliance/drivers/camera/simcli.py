"""``appliance sim camera``: render simulated camera frames, or score pictures, offline.

Two uses:

- render the simulator's scene with a fault (``--fault tilted``), write the frames as PNG files
  (``--out DIR``) and print each frame's quality report, to see what the kiosk would tell a
  citizen;
- score existing pictures (``--image a.jpg --image b.png``) with the same quality rules, to
  check a camera's placement or lighting from a technician's test shots.

Reports are JSON lines on standard output: scores, reasons and eye positions, no pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from .config import QualityConfig
from .quality import assess
from .scene import FAULTS, render


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Add this command's options to ``p``."""
    p.description = (
        "Render simulated camera frames with a fault and print their quality reports "
        "(JSON lines, no pixels), or score existing pictures with the same rules."
    )
    p.add_argument(
        "--fault",
        choices=[f for f in FAULTS if f != "unplugged"],
        default="none",
        help="fault to inject into the generated scene (default: none)",
    )
    p.add_argument(
        "--frames", type=int, default=1, help="number of scene frames to render (default: 1)"
    )
    p.add_argument("--width", type=int, default=640, help="frame width in pixels (default: 640)")
    p.add_argument("--height", type=int, default=480, help="frame height in pixels (default: 480)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory to write the rendered frames to as PNG (default: write nothing)",
    )
    p.add_argument(
        "--image",
        action="append",
        type=Path,
        default=[],
        help="score this picture instead of rendering (repeatable; default: none)",
    )
    p.add_argument(
        "--no-assess",
        action="store_true",
        help="only render/write frames, print no quality report (default: print reports)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 on success, 2 on bad arguments or unreadable pictures."""
    if args.frames < 1 or args.frames > 10_000:
        print("--frames must be between 1 and 10000", file=sys.stderr)
        return 2
    if not (160 <= args.width <= 4096 and 120 <= args.height <= 3072):
        print("--width must be 160-4096 and --height 120-3072", file=sys.stderr)
        return 2
    config = QualityConfig()
    if args.image:
        status = 0
        for path in args.image:
            loaded = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if loaded is None:
                print(f"cannot read picture {path}", file=sys.stderr)
                status = 2
                continue
            report = assess(np.asarray(loaded, dtype=np.uint8), config).to_dict()
            print(json.dumps({"image": str(path), **report}))
        return status
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    for index in range(1, args.frames + 1):
        frame, _truth = render(args.width, args.height, args.fault, index)
        line: dict[str, object] = {"frame": index, "fault": args.fault}
        if args.out is not None:
            path = args.out / f"{args.fault}-{index:04d}.png"
            cv2.imwrite(str(path), frame)
            line["file"] = str(path)
        if not args.no_assess:
            line.update(assess(frame, config).to_dict())
        print(json.dumps(line))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance sim camera")
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
