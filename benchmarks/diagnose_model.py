"""Where does a trained iPOKE model lose control? Stage-1 ceiling, sampling temperature, the poke in the NLL.

Runs on an exported model (``ipoke export`` / the quickstart's ``<out>/model``) and its prepared dataset:

* ``control`` table: the autoencoder's own reconstructions (``z`` = posterior mean: the ceiling any sample can
  reach), iPOKE samples at temperature 1 (the protocol), 0.5 and 0, beside ``copy_x0`` and the re-simulated truth.
* ``pixels`` table: the same control error (DIS flow against the true endpoint flow) split into object pixels that
  stay (true motion below 0.5 px) and object pixels that move, beside copying x0 and DIS on the true clip. A model
  can gain on the moving pixels and still lose ``control/object_epe`` to a static video on the static ones.
* ``nll`` table: the cINN's NLL (nats per clip, posterior-mean ``z``) of clips whose poke hits the object, with the
  true condition, a zero poke, another clip's poke and another clip's first frame. If the true poke is barely
  better than a zero poke, the cINN ignores the poke and its samples cannot follow it.

    python benchmarks/diagnose_model.py --model quickstart/model --data quickstart/data --clips 64

Prints the three tables and writes them as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# Runs from a checkout without installing ipoke (the device machine has none installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def protocol_clips(poker, data_dir: str, split: str, clips: int):  # noqa: ANN001, ANN201
    """The evaluation protocol's clips (fixed order, one seeded poke each, no augmentation) at the model's settings."""
    return poker.evaluation_clips(data_dir, split=split, seed=42, max_clips=clips)


@torch.no_grad()
def condition_nll(poker, data_dir: str, split: str, clips: int, batch_size: int = 32) -> dict[str, float]:  # noqa: ANN001
    """Mean NLL (nats per clip) of object-poke clips under the true and three altered conditions."""
    dataset = protocol_clips(poker, data_dir, split, clips)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(len(dataset))])
    moving = ~batch["background_poke"]
    video, poke = batch["video"].to(poker.device), batch["poke"].to(poker.device)
    x0 = video[:, 0]
    z = torch.cat([poker.autoencoder.encode(part).mean for part in video.split(batch_size)])
    other = torch.roll(torch.arange(len(dataset)), 1)

    def nll(first_frame: torch.Tensor, poke_map: torch.Tensor) -> float:
        values = []
        for start in range(0, len(dataset), batch_size):
            part = slice(start, start + batch_size)
            r, log_det = poker.cinn(z[part], poker.condition(first_frame[part], poke_map[part]))
            values.append(0.5 * r.double().pow(2).flatten(1).sum(1) - log_det.double())
        return torch.cat(values).cpu()[moving].mean().item()

    return {"true": nll(x0, poke), "zero_poke": nll(x0, torch.zeros_like(poke)),
            "other_clip_poke": nll(x0, poke[other]), "other_clip_first_frame": nll(x0[other], poke),
            "clips": int(moving.sum())}


@torch.no_grad()
def object_error_by_motion(samplers: dict, poker, data_dir: str, split: str, clips: int, samples: int,  # noqa: ANN001
                           threshold: float = 0.5) -> dict[str, dict[str, float]]:
    """Mean endpoint error (px) over the static and the moving object pixels, per sampler and for two references.

    The samplers draw their own samples here (``evaluate`` does not return its videos), so the model rows are other
    draws than those of the ``control`` table.
    """
    import numpy as np

    from ipoke.evaluation import clip_generators, copy_first_frame_sampler
    from ipoke.metrics.control import estimate_flow

    dataset = protocol_clips(poker, data_dir, split, clips)
    errors: dict[str, dict[str, list[float]]] = {}
    for batch_index, batch in enumerate(torch.utils.data.DataLoader(dataset, batch_size=16)):
        flow = batch["flow"].numpy()
        mask = (batch["mask"].bool() & batch["has_mask"][:, None, None]).numpy()
        moving = mask & (np.linalg.norm(flow, axis=1) >= threshold)
        regions = {"static": mask & ~moving, "moving": moving}
        generators = clip_generators(42, batch_index * 16, len(flow))
        videos = {name: sampler(batch, samples, generators) for name, sampler in samplers.items()}
        videos["copy_x0"] = copy_first_frame_sampler(batch, 1)
        videos["true_clip"] = batch["video"][:, None]
        for name, video in videos.items():
            rows = errors.setdefault(name, {"static": [], "moving": []})
            for k in range(video.shape[1]):
                error = np.linalg.norm(estimate_flow(video[:, k, 0], video[:, k, -1]) - flow, axis=1)
                for region, selected in regions.items():
                    rows[region] += [float(error[i][selected[i]].mean())
                                     for i in range(len(error)) if selected[i].any()]
    return {name: {region: float(np.mean(values)) if values else float("nan") for region, values in rows.items()}
            for name, rows in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="exported model folder")
    parser.add_argument("--data", required=True, help="prepared dataset (e.g. the quickstart's <out>/data)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--out", default=None, help="JSON file for the three tables")
    args = parser.parse_args()

    from ipoke.evaluation import autoencoder_sampler, evaluate, format_table, poker_sampler
    from ipoke.sampling import Poker

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    poker = Poker.from_checkpoint(args.model, map_location=device)
    samplers = {"autoencoder_reconstruction": autoencoder_sampler(poker.autoencoder), "ipoke": poker_sampler(poker),
                "ipoke_temperature_0.5": poker_sampler(poker, 0.5), "ipoke_temperature_0": poker_sampler(poker, 0.0)}
    control = evaluate(samplers, args.data, split=args.split, metrics=("ssim", "psnr", "diversity", "control"),
                       n_clips=args.clips, samples=args.samples, batch_size=16, n_frames=poker.n_frames,
                       frame_step=poker.frame_step, size=poker.size, poke_size=poker.poke_size, device=device)
    print(format_table(control))
    from ipoke.data.format import PreparedDataset

    pixels: dict[str, dict[str, float]] = {}
    if PreparedDataset(args.data).index.get("source") == "synthetic":
        pixels = object_error_by_motion(samplers, poker, args.data, args.split, args.clips, args.samples)
        print("\ncontrol error over the object (px, lower is better), split by the true motion of the pixel:")
        print(f"{'model':<28} {'static (< 0.5 px)':>18} {'moving':>8}")
        for name, row in pixels.items():
            print(f"{name:<28} {row['static']:>18.3f} {row['moving']:>8.3f}")
    else:  # prepared real data stores estimated flow (and masks from GrabCut or none): no true motion to split by
        print("\ncontrol error by true motion: skipped, it needs exact ground-truth motion (synthetic datasets only)")
    nll = {split: condition_nll(poker, args.data, split, args.clips) for split in ("train", args.split)}
    print("\ncINN NLL (nats per clip, object pokes only; lower = more likely):")
    print(f"{'split':<8} {'clips':>5} {'true':>10} {'zero poke':>10} {'other poke':>11} {'other x0':>10}")
    for split, row in nll.items():
        print(f"{split:<8} {row['clips']:>5} {row['true']:>10.1f} {row['zero_poke']:>10.1f} "
              f"{row['other_clip_poke']:>11.1f} {row['other_clip_first_frame']:>10.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"control": control, "pixels": pixels, "nll": nll}, indent=1))


if __name__ == "__main__":
    main()
