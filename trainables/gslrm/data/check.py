"""Check a FaceLift-format dataset before a sweep: read every sample as training will.

    python -m trainables.gslrm.data.check LIST_FILE [--num-views N] [--image-size PX]

Each sample's opencv_cameras.json is checked field by field with the training reader's rules
and every view (not only the first `num_views`: the random dataset type may pick any of them)
is decoded and resized to the training image size. A bad sample otherwise surfaces hours into
a sweep as a crashed trial, so this reports every problem of every sample at once (a frame
with a malformed `w2c` and a truncated PNG gets both lines) instead of stopping at the first.

Output: one line per problem, ``<file>: <reason>`` (the reader's DataError message), then
``N samples, K usable, M problems``. Exit status 0 when every sample is usable, 1 when
any is not, 2 when the list file itself is missing or names no samples.

Nothing is written: views are decoded with cache_dir=None, so checking a read-only or
shared dataset leaves no `.view_cache` behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainables.gslrm.config import DatasetConfig, ImageTokenizerConfig
from trainables.gslrm.data.reader import DataError, decode_view, read_list_file, scan_sample


@dataclass
class SampleReport:
    folder: Path
    problems: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def check_sample(folder: Path, num_views: int, image_size: int) -> SampleReport:
    """Every problem of one sample folder that would stop training on it: each bad field of
    each frame, and each image that cannot be read (opened even when its frame has other bad
    fields, so one run lists everything to fix)."""
    report = SampleReport(folder)
    try:
        _, scans = scan_sample(folder)
    except DataError as exc:
        # Without a valid camera file the images cannot even be located.
        report.problems.append(str(exc))
        return report
    if len(scans) < num_views:
        # Same wording as MultiViewDataset, so the researcher sees the message training would give.
        report.problems.append(
            f"{folder}: has {len(scans)} views, fewer than num_views={num_views}"
        )
    for scan in scans:
        report.problems.extend(scan.problems)
        if scan.image_path is None:
            continue
        try:
            decode_view(scan.image_path, scan.size, image_size)
        except DataError as exc:
            report.problems.append(str(exc))
        except Exception as exc:  # any crash here would also crash a training worker
            report.problems.append(f"{scan.image_path}: unexpected {type(exc).__name__}: {exc}")
    return report


def iter_reports(list_file: str | Path, num_views: int, image_size: int) -> Iterator[SampleReport]:
    """One report per list entry, in list order. Raises DataError when the list file itself
    is missing or empty (before yielding anything)."""
    folders = read_list_file(list_file)
    return (check_sample(folder, num_views, image_size) for folder in folders)


def check_list(list_file: str | Path, num_views: int, image_size: int) -> list[str]:
    """All problems of the dataset named by `list_file` ([] when every sample is usable).

    Raises DataError when the list file itself is missing or names no samples.
    """
    return [p for report in iter_reports(list_file, num_views, image_size) for p in report.problems]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainables.gslrm.data.check",
        description="Read every sample of a FaceLift-format list file the way training will "
        "and report each problem.",
    )
    parser.add_argument("list_file", type=Path, help="data_train.txt / data_val.txt")
    parser.add_argument(
        "--num-views",
        type=_positive_int,
        default=DatasetConfig().num_views,
        help="training.dataset.num_views (default %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=_positive_int,
        default=ImageTokenizerConfig().image_size,
        help="model.image_tokenizer.image_size (default %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        reports = iter_reports(args.list_file, args.num_views, args.image_size)
    except DataError as exc:
        print(exc, file=sys.stderr)
        return 2
    samples = usable = problems = 0
    for report in reports:
        samples += 1
        usable += report.usable
        problems += len(report.problems)
        for problem in report.problems:
            # Printed as found (flushed), so a long check on a big dataset shows progress.
            print(problem, flush=True)
    print(f"{samples} samples, {usable} usable, {problems} problems")
    return 0 if usable == samples else 1


if __name__ == "__main__":
    raise SystemExit(main())
