"""Super-resolution quality through the pipeline: held-out clips, compressed, run by `streamflow run`.

What a user gets, not what the model gets in a notebook: each held-out photograph (never trained
on) becomes a 9-frame clip (a slow diagonal pan with sub-pixel jitter, `train_sr.make_eval_sequence`,
no blur), downscaled 2x2 by area, then encoded with libx264 at its default preset (`medium`) at each
CRF asked, and once losslessly (4:4:4, `qp 0`) as the uncompressed reference. All clips go through
ONE `streamflow run` of the shipped config (every clip a source of the same pipeline), whose output
is encoded losslessly (`--set video.crf=0`, one libx264 in the stage's thread) so that it does not
add damage of its own. The model's frames, decoded from those outputs, and bicubic x2 of the same
decoded input, written and decoded the same way as the pipeline's output (`through_output`), are
scored against the true high-resolution frames: PSNR-Y (BT.601 luma of 8-bit frames, 4-pixel
border shaved, the models/VSR.md convention) and SSIM-Y (scikit-image). The JSON also keeps
bicubic scored straight, without the output's round trip (`bicubic_direct_psnr_y`).

Where the evaluation and the training coincide: both downscale by area (training also blurs and
uses bicubic), both use libx264 with CRFs in this range (training draws CRF 14-36 and six presets,
and HEVC as well); the clips' motion and the photographs differ.

    python benchmarks/sr_quality.py --out out/sr_quality               # every held-out photo installed, CRF 18/23/28
    python benchmarks/sr_quality.py --sequences coffee --frames 3 --crfs 23 --out /tmp/q   # a small case
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "super_resolution.yaml"
#: libx264 for the output: lossless, so the figure is the model's, not the output encoder's.
LOSSLESS_OUTPUT = ("video.crf=0", "video.cpu_encoder=thread", "video.encoders=1", "video.preset=veryfast")


def train_sr() -> ModuleType:
    """training/train_sr.py (training/ is not a package: its folder goes on the path); it owns the held-out set."""
    if str(ROOT / "training") not in sys.path:
        sys.path.insert(0, str(ROOT / "training"))
    import train_sr

    return train_sr


def decoded_frames(path: Path) -> list[torch.Tensor]:
    """Every frame of a video as float RGB `(3, H, W)` in [0, 1], converted as the pipeline's CPU
    decoder converts (the stream's own matrix and range)."""
    from streamflow.video.pyav_decode import PyAVDecoder

    return [frame.image.float().div(255.0) for frame in PyAVDecoder(path)]


def through_output(frames: Sequence[torch.Tensor], path: Path) -> list[torch.Tensor]:
    """`frames` as they come out of the config's output path: 8-bit, NV12 by `rgb_to_nv12` with the
    `sr_output` stage's default matrix (BT.709 limited), libx264 at `LOSSLESS_OUTPUT`'s CRF 0, decoded.

    The baseline goes through it too, so the model is not charged for the output's 4:2:0 chroma,
    which moves the BT.601 luma computed from the decoded RGB (the two matrices differ).
    """
    from streamflow.ops.color import rgb_to_nv12
    from streamflow.video.encode import VideoWriter

    with VideoWriter(path, fps=30, codec="h264", crf=0, preset="veryfast", backend="cpu") as writer:
        for index, frame in enumerate(frames):
            rgb = frame.clamp(0, 1).mul(255).round().to(torch.uint8)
            writer.write(
                rgb_to_nv12(rgb, matrix="bt709", full_range=False), "nv12", pts=index, time_base=Fraction(1, 30)
            )
    return decoded_frames(path)


def ssim_y(a: torch.Tensor, b: torch.Tensor, shave: int = 4) -> float:
    """SSIM of the BT.601 luma of 8-bit-rounded `(3, H, W)` images in [0, 1], border shaved like `psnr_y`."""
    from skimage.metrics import structural_similarity

    luma_y = train_sr().luma_y
    return float(
        structural_similarity(
            luma_y(a.cpu(), shave).double().numpy(), luma_y(b.cpu(), shave).double().numpy(), data_range=1.0
        )
    )


def run_pipeline(sources: dict[str, Path], out: Path, config: Path = CONFIG, model: Path | None = None) -> float:
    """One `streamflow run` of `config` over all `sources` (id -> clip); returns its wall time.
    `model` replaces the `upscale` stage's model file (to score another one through the same config)."""
    cmd = [sys.executable, "-m", "streamflow.cli", "run", str(config), "--quiet"]
    if model is not None:
        cmd += ["--set", f"upscale.model={model}"]
    for source_id, path in sources.items():
        cmd += ["--source", f"{source_id}={path}"]
    for override in LOSSLESS_OUTPUT:
        cmd += ["--set", override]
    env = dict(os.environ, SR_OUT=str(out))
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"streamflow run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def evaluate(
    *,
    out: Path,
    sequences: Sequence[str] | None = None,
    frames: int = 9,
    crfs: Sequence[int] = (18, 23, 28),
    data: Path | None = None,
    config: Path = CONFIG,
    model: Path | None = None,
) -> dict[str, Any]:
    """Make the clips, run the pipeline once over all of them, score; returns the report (also written as JSON)."""
    tsr = train_sr()
    photos = [p for p in tsr.load_photos(data) if p.held_out]
    if sequences:
        missing = sorted(set(sequences) - {p.name for p in photos})
        if missing:
            raise SystemExit(f"--sequences: {', '.join(missing)} not among the held-out photographs available")
        photos = [p for p in photos if p.name in sequences]
    if not photos:
        raise SystemExit("no held-out photograph available: install scikit-image (and scikit-learn, matplotlib)")
    conditions = [("lossless", tsr.Compression("h264", None))]
    conditions += [(f"crf{crf}", tsr.Compression("h264", crf)) for crf in crfs]
    clips_dir, outputs_dir = out / "clips", out / "outputs"
    clips_dir.mkdir(parents=True, exist_ok=True)
    (out / "bicubic").mkdir(exist_ok=True)
    cpu = torch.device("cpu")
    truth: dict[str, torch.Tensor] = {}
    sources: dict[str, Path] = {}
    for i, photo in enumerate(photos):
        # The seed of train_sr's evaluation, so the clips are the ones models/VSR.md's tables use.
        seq = tsr.make_eval_sequence(photo, frames, 1000 + i, cpu, blur=0.0)
        truth[photo.name] = seq.hr
        rgb = seq.lr.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for key, compression in conditions:
            path = clips_dir / f"{photo.name}-{key}.mp4"
            tsr.encode_clip(rgb, compression, path)
            sources[f"{photo.name}-{key}"] = path
    wall = run_pipeline(sources, outputs_dir, config, model)
    rows = []
    for source_id, clip in sources.items():
        name, key = source_id.rsplit("-", 1)
        hr = truth[name]
        lr = decoded_frames(clip)
        sr = decoded_frames(outputs_dir / f"super_resolution_{source_id}.mp4")
        if len(sr) != len(hr) or len(lr) != len(hr):
            raise SystemExit(f"{source_id}: {len(lr)} input and {len(sr)} output frames, expected {len(hr)}")
        if sr[0].shape != hr[0].shape:
            raise SystemExit(f"{source_id}: output {tuple(sr[0].shape)}, expected {tuple(hr[0].shape)}")
        bicubic = [
            F.interpolate(low.unsqueeze(0), scale_factor=2, mode="bicubic", align_corners=False)[0] for low in lr
        ]
        baseline = through_output(bicubic, out / "bicubic" / f"{source_id}.mp4")
        scores: dict[str, list[float]] = {
            "bicubic_psnr_y": [tsr.psnr_y(b, t) for b, t in zip(baseline, hr, strict=True)],
            "model_psnr_y": [tsr.psnr_y(m, t) for m, t in zip(sr, hr, strict=True)],
            "bicubic_ssim_y": [ssim_y(b, t) for b, t in zip(baseline, hr, strict=True)],
            "model_ssim_y": [ssim_y(m, t) for m, t in zip(sr, hr, strict=True)],
            "bicubic_direct_psnr_y": [tsr.psnr_y(b, t) for b, t in zip(bicubic, hr, strict=True)],
        }
        row: dict[str, Any] = {
            "sequence": name,
            "input": key,
            "frames": len(hr),
            "lr_size": f"{lr[0].shape[2]}x{lr[0].shape[1]}",
        }
        row.update({k: round(sum(v) / len(v), 4) for k, v in scores.items()})
        row["gain_db"] = round(row["model_psnr_y"] - row["bicubic_psnr_y"], 3)
        rows.append(row)
    report = {
        "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "model": str(model) if model else "the config's",
        "output_overrides": list(LOSSLESS_OUTPUT),
        "frames": frames,
        "crfs": list(crfs),
        "pipeline_wall_s": round(wall, 1),
        "rows": rows,
    }
    (out / "sr_quality.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "sr_quality.md").write_text(markdown(report))
    return report


def markdown(report: dict[str, Any]) -> str:
    """One table per input (lossless first, then each CRF) and a summary of mean gains."""
    rows = report["rows"]
    inputs = list(dict.fromkeys(r["input"] for r in rows))
    lines = []
    summary = [
        "| input | bicubic PSNR-Y | model PSNR-Y | mean gain (dB) | worst gain | SSIM-Y bicubic → model |",
        "|---|---|---|---|---|---|",
    ]
    for key in inputs:
        part = [r for r in rows if r["input"] == key]
        title = "lossless (H.264 4:4:4, qp 0)" if key == "lossless" else f"H.264 CRF {key[3:]} (libx264 medium, 4:2:0)"
        lines += [
            f"### {title}",
            "",
            "| sequence | frames | LR size | bicubic PSNR-Y | model PSNR-Y | gain (dB) | SSIM-Y bicubic | model |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in part:
            lines.append(
                f"| {r['sequence']} | {r['frames']} | {r['lr_size']} | {r['bicubic_psnr_y']:.2f} "
                f"| {r['model_psnr_y']:.2f} | {r['gain_db']:+.2f} "
                f"| {r['bicubic_ssim_y']:.4f} | {r['model_ssim_y']:.4f} |"
            )
        mean = {
            k: sum(r[k] for r in part) / len(part)
            for k in ("bicubic_psnr_y", "model_psnr_y", "bicubic_ssim_y", "model_ssim_y")
        }
        gain = mean["model_psnr_y"] - mean["bicubic_psnr_y"]
        worst = min(part, key=lambda r: r["gain_db"])
        lines += [
            f"| **mean** | | | {mean['bicubic_psnr_y']:.2f} | {mean['model_psnr_y']:.2f} | {gain:+.2f} "
            f"| {mean['bicubic_ssim_y']:.4f} | {mean['model_ssim_y']:.4f} |",
            "",
        ]
        summary.append(
            f"| {title} | {mean['bicubic_psnr_y']:.2f} | {mean['model_psnr_y']:.2f} | {gain:+.2f} "
            f"| {worst['gain_db']:+.2f} ({worst['sequence']}) "
            f"| {mean['bicubic_ssim_y']:.4f} → {mean['model_ssim_y']:.4f} |"
        )
    return "\n".join([*summary, "", *lines])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "sr_quality")
    parser.add_argument("--sequences", nargs="*", default=None, help="held-out photographs (default: all installed)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--crfs", type=int, nargs="*", default=[18, 23, 28])
    parser.add_argument("--data", type=Path, default=None, help="a `train_sr.py data` folder instead of the packages")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--model", type=Path, default=None, help="another model file for the `upscale` stage")
    args = parser.parse_args(argv)
    if args.frames < 1 or any(not 0 <= c <= 51 for c in args.crfs):
        raise SystemExit("--frames must be >= 1 and --crfs within 0..51")
    report = evaluate(
        out=args.out,
        sequences=args.sequences,
        frames=args.frames,
        crfs=args.crfs,
        data=args.data,
        config=args.config,
        model=args.model,
    )
    print(markdown(report))
    print(f"pipeline wall {report['pipeline_wall_s']} s; report in {args.out / 'sr_quality.md'}")


if __name__ == "__main__":
    main()
