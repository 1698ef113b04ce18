"""`arbooth inspect noise`: which scales decide what an image shows.

For every seed a reference image is sampled; then, for each chosen scale k, the same sampling is
run again with the same random stream, except that scale k's freshly drawn bits are perturbed
before they are accumulated. Later scales continue from the perturbed state (the sampler's own
accumulation rule), so the final image shows what scale k's tokens decided. The change is
measured in pixels (L1, PSNR), structure (SSIM) and features (DINO, CLIP or the tokenizer's).

Each batch holds one seed's reference next to its perturbed runs: rows of one batch go through
the same kernels, so a perturbation of strength 0 gives exactly the reference image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..analysis.perturb import parse_scales
from ..config import InspectNoiseConfig
from ..errors import InvalidInputError
from ..loading import ResolvedModel
from ..models.schedules import model_scales
from . import session
from .session import EventFn

REPORT_FILES = {"json": "noise.json", "grid": "noise-grid.png", "plot": "noise-plot.png"}
METRICS = ("l1", "psnr", "ssim", "feature")
#: --compile auto turns CUDA graphs and compiled kernels on from this many sampled images
COMPILE_AUTO_MIN_IMAGES = 64


@dataclass
class ScaleChange:
    """How much perturbing one scale changed the final images, one value per seed."""

    scale: int  # 1-based
    height: int  # token map size at this scale
    width: int
    tokens: int
    bits_changed: list[float] = field(default_factory=list)  # fraction of the scale's bits the perturbation changed
    l1: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    feature: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        from ..analysis.metrics import mean_and_spread

        out = {}
        for name in ("bits_changed", *METRICS):
            m, s = mean_and_spread(getattr(self, name))
            out[name] = {"mean": m, "std": s}
        return out


@dataclass
class NoiseReport:
    prompt: str
    model: str
    model_hash: str
    subject: str | None
    subject_hash: str | None
    mode: str
    strength: float
    seeds: list[int]
    features: str  # which feature extractor measured "feature"
    image_size: tuple[int, int]  # (height, width) px
    scales: list[ScaleChange]
    files: dict[str, str]
    seconds: float
    samples: int  # images sampled, references included
    device: str
    config: dict[str, Any]
    arbooth_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, sc in zip(d["scales"], self.scales):
            row["summary"] = sc.summary()
        return d


def inspect_noise(config: InspectNoiseConfig, *, on_event: EventFn | None = None,
                  resolved: ResolvedModel | None = None, components: Any = None) -> NoiseReport:
    """Run the per-scale noise analysis; writes the JSON report, the grid and the plot.

    ``resolved``/``components``: a model already resolved or built (benchmarks pass random-init
    components); by default the model is resolved and loaded as `arbooth gen` does.
    """
    emit = on_event or session.no_events
    config.validate()
    from ..analysis.features import check_features

    # Every check before any work: subject, model, sizes, scales, features, output folder.
    subject = session.pick_subjects([config.prompt], config.subject, config.delta)[0]
    resolved = session.resolve(config.model, [subject], resolved=resolved)
    spec = resolved.spec
    size = session.model_size(spec, config.size)
    scales = model_scales(size, num_scales=spec.num_scales or None)
    try:
        chosen = parse_scales(config.scales, len(scales))
    except ValueError as exc:
        raise InvalidInputError(str(exc), hint=f"{spec.name} at {size} has {len(scales)} scales") from None
    params = session.sampling_params(spec, config)
    params.per_scale(len(scales))
    check_features(config.features, config.feature_weights)
    session.check_device(config.device)
    paths = session.prepare_report_dir(config.out_dir, REPORT_FILES, config.overwrite)
    return _Analysis(config, resolved, subject, scales, chosen, params, paths, emit).run(components)


class _Analysis:
    def __init__(self, config: InspectNoiseConfig, resolved: ResolvedModel, subject: Any, scales: tuple,
                 chosen: tuple[int, ...], params: Any, paths: dict[str, Path], emit: EventFn) -> None:
        self.c, self.resolved, self.subject_info = config, resolved, subject
        self.scales, self.chosen, self.params, self.paths, self.emit = scales, chosen, params, paths, emit
        self.seeds = [config.seed + i for i in range(config.seeds)]

    def run(self, comps: Any = None) -> NoiseReport:
        from ..analysis.features import load_features
        from ..sampling.sample import SamplingEngine
        from ..subjects.use import SubjectSwitch

        c, spec = self.c, self.resolved.spec
        t0 = time.perf_counter()
        comps = session.open_model(self.resolved, c.device, c.dtype, self.emit, components=comps)
        device = comps.device
        self.subject = session.load_subject(comps, self.resolved, self.subject_info)
        SubjectSwitch(comps.transformer).use(self.subject)
        self.text = session.encode(comps, [(c.prompt, self.subject)])[session.text_key(c.prompt, self.subject)]
        self.text = self.text.to(device)
        self.comps, self.device = comps, device
        self.features = load_features(c.features, weights=c.feature_weights, vae=comps.vae, device=device)
        self.batch = self._batch_size()
        chunks = [self.chosen[i:i + self.batch - 1] for i in range(0, len(self.chosen), self.batch - 1)]
        swap_donors = c.mode == "swap"
        n_donor = (len(self.seeds) if len(self.seeds) > 1 else 1) if swap_donors else 0
        total = len(self.seeds) * sum(1 + len(ch) for ch in chunks) + n_donor
        use_engine = device.type == "cuda" and (
            c.compile == "on" or (c.compile == "auto" and total >= COMPILE_AUTO_MIN_IMAGES))
        self.engine = SamplingEngine() if use_engine else None
        self.emit("plan", {"samples": total, "scales": len(self.chosen), "seeds": len(self.seeds),
                           "batch": self.batch, "features": self.features.name})
        self.done = 0
        self.donors = self._donor_bits() if swap_donors else {}

        rows = {k: ScaleChange(k, self.scales[k - 1][1], self.scales[k - 1][2], int(np.prod(self.scales[k - 1])))
                for k in self.chosen}
        ref_thumbs: list[Any] = []
        thumbs: dict[int, list[Any]] = {k: [] for k in self.chosen}
        for seed in self.seeds:
            for ci, chunk in enumerate(chunks):
                imgs, changed = self._sample(seed, (None, *chunk))
                ref, pert = imgs[:1], imgs[1:]
                ref_rep = ref.expand_as(pert)
                dist = self._distances(ref_rep, pert)
                for j, k in enumerate(chunk):
                    row = rows[k]
                    row.bits_changed.append(changed[j + 1])
                    for name in METRICS:
                        getattr(row, name).append(float(dist[name][j]))
                    thumbs[k].append(self._thumb(pert[j]))
                if ci == 0:
                    ref_thumbs.append(self._thumb(ref[0]))
        H, W = int(imgs.shape[-2]), int(imgs.shape[-1])
        report = NoiseReport(
            prompt=c.prompt, model=spec.name, model_hash=self.resolved.model_hash,
            subject=None if self.subject is None else self.subject.name,
            subject_hash=None if self.subject is None else self.subject.sha256,
            mode=c.mode, strength=c.strength, seeds=self.seeds, features=self.features.name, image_size=(H, W),
            scales=[rows[k] for k in self.chosen], files={k: str(p) for k, p in self.paths.items()},
            seconds=0.0, samples=self.done, device=str(device), config=c.to_dict(),
        )
        report.seconds = time.perf_counter() - t0
        self._write(report, ref_thumbs, thumbs)
        return report

    # -- sampling ----------------------------------------------------------------------------

    def _batch_size(self) -> int:
        from ..sampling.sample import guided_images_that_fit

        want = 1 + len(self.chosen)
        if self.c.batch_size:
            return max(2, min(self.c.batch_size, want))
        if self.device.type != "cuda":
            return min(want, 8)
        return max(2, min(want, guided_images_that_fit(self.comps.transformer, self.scales, self.device, 0.6)))

    def _generators(self, seed: int, n: int) -> list[Any]:
        import torch

        return [torch.Generator(device=self.device).manual_seed(seed) for _ in range(n)]

    def _donor_bits(self) -> dict[int, list[Any]]:
        """For ``swap``: the chosen scales' bits of each seed's donor run (the next seed, cyclically;
        with one seed, seed + 1)."""
        from ..sampling.sample import sample_token_maps

        seeds = self.seeds
        donor_of = {s: seeds[(i + 1) % len(seeds)] for i, s in enumerate(seeds)} if len(seeds) > 1 else {
            seeds[0]: seeds[0] + 1}
        out: dict[int, list[Any]] = {}
        for donor in sorted(set(donor_of.values())):
            maps = sample_token_maps(self.comps.transformer, self.comps.vae, self.text, self.scales, self.params,
                                     self._generators(donor, 1), engine=self.engine)
            out[donor] = [b[0].cpu() for b in maps.bits_per_scale]
            self._advance(1)
        return {s: out[d] for s, d in donor_of.items()}

    def _advance(self, n: int) -> None:
        self.done += n
        self.emit("sample", {"done": self.done})

    def _sample(self, seed: int, targets: tuple[int | None, ...]) -> tuple[Any, list[float]]:
        """Images of ``seed`` with the scale of each row perturbed (None: the reference)."""
        import torch

        from ..models.text_encoder import TextCond
        from ..sampling.sample import decode_images, sample_token_maps
        from ..analysis.perturb import perturb_bits, perturbation_seed

        c, B = self.c, len(targets)
        changed = [0.0] * B

        def edit(si: int, bits_Bld: torch.Tensor) -> torch.Tensor:
            k = si + 1
            rows = [r for r, t in enumerate(targets) if t == k]
            if not rows:
                return bits_Bld
            out = bits_Bld.clone()
            for r in rows:
                g = torch.Generator().manual_seed(perturbation_seed(seed, k))
                donor = self.donors[seed][si] if c.mode == "swap" else None
                new = perturb_bits(bits_Bld[r].cpu(), c.mode, c.strength, g, donor)  # type: ignore[arg-type]
                changed[r] = float((new != bits_Bld[r].cpu()).float().mean())
                out[r] = new.to(out.device)
            return out

        text = TextCond.cat([self.text] * B)
        maps = sample_token_maps(self.comps.transformer, self.comps.vae, text, self.scales, self.params,
                                 self._generators(seed, B), engine=self.engine, edit_bits=edit)
        summed = maps.summed_Bd1HW
        del maps
        imgs = decode_images(self.comps.vae, summed, engine=self.engine)
        self._advance(B)
        return imgs, changed

    def _distances(self, ref_B3HW: Any, img_B3HW: Any) -> dict[str, Any]:
        from ..analysis.metrics import cosine_distance, l1_distance, psnr, ssim

        import torch

        a, b = ref_B3HW, img_B3HW  # on the model's device: SSIM of 1024 px images is slow on a CPU
        # one image at a time, as the decoder: a feature must not depend on its batch
        fa = self.features(a[:1]).expand(b.shape[0], -1)
        fb = torch.cat([self.features(b[i:i + 1]) for i in range(b.shape[0])])
        return {"l1": l1_distance(a, b).cpu(), "psnr": psnr(a, b).cpu(), "ssim": ssim(a, b).cpu(),
                "feature": cosine_distance(fa, fb).cpu()}

    def _thumb(self, img_3HW: Any) -> Any:
        from PIL import Image

        arr = img_3HW.permute(1, 2, 0).cpu().numpy()
        im = Image.fromarray(arr, mode="RGB")
        w = self.c.thumb
        return im if im.width <= w else im.resize((w, max(1, round(im.height * w / im.width))),
                                                  Image.Resampling.LANCZOS)

    # -- outputs -----------------------------------------------------------------------------

    def _provenance(self, report: NoiseReport) -> dict[str, Any]:
        return {"prompt": report.prompt, "model": report.model, "model_hash": report.model_hash,
                "subject": report.subject, "subject_hash": report.subject_hash, "seed": report.seeds[0],
                "seeds": report.seeds, "mode": report.mode, "strength": report.strength,
                "features": report.features, "arbooth_version": __version__, "analysis": "inspect noise",
                "config": report.config}

    def _write(self, report: NoiseReport, ref_thumbs: list[Any], thumbs: dict[int, list[Any]]) -> None:
        from ..sampling.writers import write_json, write_png
        from ..analysis.plots import Panel, Series, labelled_grid, line_panels

        meta = self._provenance(report)
        rows = [ref_thumbs] + [thumbs[k] for k in self.chosen]
        labels = ["reference"] + [f"scale {sc.scale}\n{sc.height}x{sc.width}" for sc in report.scales]
        grid = labelled_grid(rows, labels, [f"seed {s}" for s in report.seeds], thumb=self.c.thumb,
                             title=f"{report.mode} p={report.strength:g}: {report.prompt}")
        write_png(self.paths["grid"], np.asarray(grid), meta)

        def series(name: str, key: str, f: Callable[[float], float] = lambda v: v) -> Series:
            summ = [sc.summary()[key] for sc in report.scales]
            return Series(name, [f(s["mean"]) for s in summ], [s["std"] for s in summ])

        x = [f"{sc.scale}\n{sc.height}x{sc.width}" for sc in report.scales]
        plot = line_panels(
            [Panel("pixel change (L1, 0-1)", "mean |a - b|", [series("L1", "l1")]),
             Panel("structure change (1 - SSIM)", "1 - SSIM", [series("1 - SSIM", "ssim", lambda v: 1.0 - v)]),
             Panel(f"feature distance ({self.features.kind})", "1 - cosine", [series("feature", "feature")])],
            x, title=f"Change of the final image when one scale is perturbed ({report.mode}, p={report.strength:g}, "
                     f"{len(report.seeds)} seeds; bars: +/- 1 std)",
            x_label="perturbed scale (token map size)")
        write_png(self.paths["plot"], np.asarray(plot), meta)
        write_json(self.paths["json"], report.to_dict())
