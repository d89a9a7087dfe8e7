"""Speed of the stage-2 cINN: training throughput / peak memory and sampling (INN inverse) latency.

At the reference architecture (z_dim 32, hidden 2048, the released 15-level MaCow flow, 1054.4 M parameters;
batch 40; 64x64 clips give 32x8x8 latents) against the fast ``coupling`` architecture, in fp32 (TF32 off: an fp32
eager implementation of the reference design, the baseline), TF32, bf16 autocast, and bf16 + CUDA graphs. Only the
INN is timed (stage-1 networks are frozen and cheap next to it: the decode of 10 frames took 34 ms in the original).

    python benchmarks/bench_stage2.py                       # CUDA, reference sizes, prints a table
    python benchmarks/bench_stage2.py --device cpu          # smoke run with tiny widths (checks the script)
    python benchmarks/bench_stage2.py --json out.json       # also write the rows as JSON

Rows that fail (e.g. out of memory) are printed with the error and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipoke.losses.flow import gaussian_nll  # noqa: E402
from ipoke.models.cinn import ConditionalINN, build_flow_optimizer, stage2_condition  # noqa: E402
from ipoke.models.cinn.graphed import GraphedNLLStep  # noqa: E402

ROWS: list[dict] = []


JSON_PATH: list[Path] = []  # --json, rewritten after every row: a call cut off at its time limit keeps its rows


def log(row: dict) -> None:
    ROWS.append(row)
    if JSON_PATH:
        JSON_PATH[0].write_text(json.dumps(ROWS, indent=1))
    cells = [f"{row.get(key, '')}" for key in ("bench", "arch", "precision", "mode", "batch")]
    if "error" in row:
        print(f"| {' | '.join(cells)} | failed: {row['error']} |", flush=True)
        return
    numbers = [f"{row[key]:.1f}" if isinstance(row.get(key), float) else str(row.get(key, "")) for key in
               ("ms", "samples_per_s", "peak_gib")]
    print(f"| {' | '.join(cells + numbers)} |", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def timed(fn: Callable[[], None], device: torch.device, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def build(arch: str, args, device: torch.device) -> ConditionalINN:
    kwargs = dict(z_dim=args.z_dim, condition_channels=128, spatial_size=8, architecture=arch, seed=0)
    if arch == "macow":
        kwargs.update(hidden_channels=args.hidden, num_steps=args.num_steps, factor=args.factor)
    else:
        kwargs.update(hidden_channels=args.coupling_hidden, num_blocks=args.coupling_blocks)
    with torch.device(device):
        model = ConditionalINN(**kwargs)
    model = model.to(device)
    z, h = random_batch(args, 8, device)
    model.initialize_actnorm(z, h)
    # Zero-initialised output layers make a fresh flow nearly the identity; perturb them so timings see real values.
    # Seeded, so that the printed inverse error and log-det repeat from run to run.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _name, parameter in model.named_parameters():
            if not parameter.abs().sum() > 0:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 1e-3)
    return model


def random_batch(args, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(batch, args.z_dim, 8, 8, generator=generator).to(device)
    h = torch.randn(batch, 128, 8, 8, generator=generator).to(device)
    return z, h


def bench_train(model: ConditionalINN, arch: str, precision: str, mode: str, args, device: torch.device) -> None:
    row = dict(bench="train", arch=arch, precision=precision, mode=mode, batch=args.batch)
    optimizer = None
    try:
        set_tf32(precision == "tf32")
        model.train()
        fused = device.type == "cuda" and mode != "eager-baseline"
        optimizer, scheduler = build_flow_optimizer(model.parameters(), fused=fused or None)
        z, h = random_batch(args, args.batch, device, seed=1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def eager_step() -> None:
            with autocast(device, precision):
                loss = gaussian_nll(*model(z, h))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

        step = eager_step
        if mode == "cuda-graph":
            # The training module's path (PokeINNModule(cuda_graph=True)): forward + backward replayed as a graph,
            # the fused AMSGrad step eager.
            graphed = GraphedNLLStep(model, warmup_steps=1)

            def graph_step() -> None:
                with autocast(device, precision):
                    graphed(z, h)
                optimizer.step()
                scheduler.step()

            step = graph_step
            for _ in range(2):  # eager warm-up step, then the capture (+ first replay)
                step()
            assert graphed.captured
        for _ in range(args.warmup):
            step()
        times = timed(step, device, args.train_iters)
        ms = statistics.median(times)
        row.update(ms=ms, samples_per_s=args.batch / ms * 1000)
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        log(row)
    except Exception as error:  # keep going: one failing row must not cost the whole (device-time-limited) run
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        log(row)
    finally:
        set_tf32(False)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        optimizer = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_sample(model: ConditionalINN, arch: str, precision: str, mode: str, batch: int, args,
                 device: torch.device) -> None:
    row = dict(bench="sample", arch=arch, precision=precision, mode=mode, batch=batch)
    try:
        set_tf32(False)
        model.eval()
        _, h = random_batch(args, batch, device, seed=2)
        generator = torch.Generator(device=device).manual_seed(0)
        iters = args.sample_iters if arch == "macow" else args.sample_iters * 10

        def sample() -> torch.Tensor:
            with torch.inference_mode(), autocast(device, precision):
                return model.sample(h, generator=generator)

        fn = sample
        if mode == "cuda-graph":
            static_r = torch.randn(batch, *model.latent_shape, device=device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad(), autocast(device, precision, cache_enabled=False):
                model.inverse(static_r, h)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad(), autocast(device, precision, cache_enabled=False):
                static_z = model.inverse(static_r, h)

            def replay() -> torch.Tensor:
                static_r.normal_(generator=generator)
                graph.replay()
                return static_z

            fn = replay
        fn()
        times = timed(fn, device, iters)
        ms = statistics.median(times)
        row.update(ms=ms, samples_per_s=batch / ms * 1000)
        log(row)
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        log(row)
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def build_stage1(args, device: torch.device) -> tuple:
    """Random-weight stage-1 networks at the reference widths (64 px, 10 frames), in eval mode."""
    from ipoke.models.autoencoder import VideoAutoencoder
    from ipoke.models.encoders import ImageEncoder, PokeEncoder

    small = device.type == "cpu"
    widths = dict(encoder_channels=[8, 8, 8, 8], decoder_channels=[8, 8, 8, 8], spade_hidden_channels=8,
                  norm_groups=4) if small else {}
    encoder_widths = dict(base_channels=8, max_channels=8, norm_groups=4) if small else {}
    autoencoder = VideoAutoencoder(spatial_size=64, n_frames=10, z_dim=args.z_dim, **widths)
    image_encoder = ImageEncoder(spatial_size=64, embedding_channels=64, **encoder_widths)
    poke_encoder = PokeEncoder(spatial_size=64, embedding_channels=64, **encoder_widths)
    return tuple(network.to(device).eval() for network in (autoencoder, image_encoder, poke_encoder))


def bench_pipeline(model: ConditionalINN, stage1: tuple, arch: str, precision: str, mode: str, batch: int, args,
                   device: torch.device) -> None:
    """One poke -> 10 frames: embed x0 and the poke, draw r, invert the cINN, decode with the autoencoder."""
    row = dict(bench="poke->video", arch=arch, precision=precision, mode=mode, batch=batch)
    autoencoder, image_encoder, poke_encoder = stage1
    try:
        set_tf32(False)
        model.eval()
        generator = torch.Generator(device="cpu").manual_seed(4)
        x0 = (torch.rand(batch, 3, 64, 64, generator=generator) * 2 - 1).to(device)
        poke = torch.zeros(batch, 2, 64, 64, device=device)
        poke[:, :, 30:35, 30:35] = 3.0
        r = torch.randn(batch, *model.latent_shape, device=device)

        def pipeline() -> torch.Tensor:
            with torch.no_grad(), autocast(device, precision, cache_enabled=mode != "cuda-graph"):
                h = stage2_condition(image_encoder=image_encoder, poke_encoder=poke_encoder, first_frame=x0, poke=poke,
                                     autoencoder=autoencoder if model.static_reference else None)
                z = model.inverse(r, h)
                return autoencoder.decode(z.to(x0.dtype), x0)

        fn = pipeline
        if mode == "cuda-graph":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                pipeline()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_video = pipeline()

            def replay() -> torch.Tensor:
                r.normal_()
                graph.replay()
                return static_video

            fn = replay
        out = fn()
        assert out.shape == (batch, 10, 3, 64, 64), out.shape
        iters = args.sample_iters if arch == "macow" else args.sample_iters * 10
        ms = statistics.median(timed(fn, device, iters))
        row.update(ms=ms, samples_per_s=batch / ms * 1000)
        log(row)
    except Exception as error:
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        log(row)
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def check_inverse(model: ConditionalINN, arch: str, args, device: torch.device) -> None:
    """Round-trip error z -> r -> z at this size, fp32 (TF32 off) and bf16 autocast (printed, not a timing)."""
    model.eval()
    z, h = random_batch(args, 4, device, seed=3)
    for precision in ("fp32", "bf16"):
        try:
            with torch.no_grad(), autocast(device, precision):
                r, log_det = model(z, h)
                error = (model.inverse(r, h) - z).abs().max().item()
            print(f"# {arch} {precision}: max |inverse(forward(z)) - z| = {error:.2e}, "
                  f"mean log-det {log_det.mean().item():.1f}", flush=True)
            ROWS.append(dict(bench="inverse_error", arch=arch, precision=precision, error=error))
        except Exception as error:
            print(f"# {arch} {precision}: inverse check failed: {type(error).__name__}: {error}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--z-dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=2048, help="MaCow coupling width (reference 2048)")
    parser.add_argument("--num-steps", type=int, nargs="+", default=[10, 5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1])
    parser.add_argument("--factor", type=int, default=16)
    parser.add_argument("--coupling-hidden", type=int, default=512)
    parser.add_argument("--coupling-blocks", type=int, default=16)
    parser.add_argument("--train-iters", type=int, default=5)
    parser.add_argument("--sample-iters", type=int, default=3, help="timed MaCow samples (coupling: 10x)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--archs", nargs="+", default=["macow", "coupling"])
    parser.add_argument("--skip", nargs="*", default=[], choices=("train", "sample", "pipeline"),
                        help="'train', 'sample' and/or 'pipeline'")
    parser.add_argument("--json", type=Path, help="write all rows to this file")
    args = parser.parse_args()
    if min(args.batch, args.train_iters, args.sample_iters) < 1 or args.warmup < 0:
        parser.error("--batch, --train-iters and --sample-iters must be >= 1 and --warmup >= 0")
    if args.json:
        JSON_PATH.append(args.json)
    device = torch.device(args.device)
    if device.type == "cpu":
        # Smoke mode: tiny widths and few levels, only to check that every code path runs. Only the sizes left at
        # their (GPU) defaults shrink; flags given on the command line are kept.
        torch.set_num_threads(1)
        tiny = dict(batch=2, hidden=16, num_steps=[1, 1], coupling_hidden=16, coupling_blocks=2, train_iters=1,
                    sample_iters=1, warmup=1)
        shrunk = [name for name, value in tiny.items() if getattr(args, name) == parser.get_default(name)]
        for name in shrunk:
            setattr(args, name, tiny[name])
        if shrunk:
            print(f"# CPU smoke mode: tiny {', '.join('--' + name.replace('_', '-') for name in shrunk)}", flush=True)
    set_tf32(False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# bench_stage2 on {name}, torch {torch.__version__}, batch {args.batch}, z_dim {args.z_dim}, "
          f"MaCow hidden {args.hidden} steps {args.num_steps}, coupling hidden {args.coupling_hidden} x "
          f"{args.coupling_blocks} blocks", flush=True)
    print("| bench | arch | precision | mode | batch | ms | samples/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    graph_modes = ["cuda-graph"] if device.type == "cuda" else []
    for arch in args.archs:
        model = build(arch, args, device)
        params = sum(p.numel() for p in model.parameters())
        print(f"# {arch}: {params / 1e6:.1f} M parameters", flush=True)
        ROWS.append(dict(bench="params", arch=arch, params=params))
        check_inverse(model, arch, args, device)
        if "train" not in args.skip:
            configs = [("fp32", "eager-baseline"), ("tf32", "eager"), ("bf16", "eager")]
            configs += [("bf16", mode) for mode in graph_modes]
            for precision, mode in configs:
                if device.type == "cpu" and precision != "fp32":
                    continue
                bench_train(model, arch, precision, mode, args, device)
        if "sample" not in args.skip:
            for batch in (1, 16):
                configs = [("fp32", "eager"), ("bf16", "eager")]
                configs += [(p, m) for m in graph_modes for p in ("fp32", "bf16")]
                for precision, mode in configs:
                    if device.type == "cpu" and precision != "fp32":
                        continue
                    bench_sample(model, arch, precision, mode, batch if device.type == "cuda" else min(batch, 2), args,
                                 device)
        if "pipeline" not in args.skip:
            stage1 = build_stage1(args, device)
            for batch in (1, 16) if device.type == "cuda" else (1,):  # the CPU smoke run: batch 1 once
                configs = [("fp32", "eager"), ("bf16", "eager")] + [("bf16", m) for m in graph_modes]
                for precision, mode in configs:
                    if device.type == "cpu" and precision != "fp32":
                        continue
                    bench_pipeline(model, stage1, arch, precision, mode, batch, args, device)
            del stage1
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(ROWS, indent=1))


if __name__ == "__main__":
    main()
