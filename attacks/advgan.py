"""AdvGAN (Xiao et al. 2018, "Generating Adversarial Examples with Adversarial Networks", https://arxiv.org/abs/1801.02610).

A generator G maps an image to a perturbation; a discriminator D keeps x + G(x) realistic. G is
trained once on the TRAINING split of the run's dataset, then the attack is one forward pass of G
per batch. The generator minimizes (default weights after the reference implementation,
mathcbc/advGAN_pytorch: adversarial 10, hinge 1, GAN 1, c = 0.1, divided here by 10; unlike it,
every term is a batch mean and the margin is taken on logits, not probabilities):

    L = L_adv + alpha * L_GAN + beta * L_hinge
    L_adv   = mean max(Z_y - max_{i != y} Z_i, -kappa)      C&W margin on the target's logits
    L_GAN   = mean (D(x_adv) - 1)^2                           least-squares GAN; D: (D(x) - 1)^2 + D(x_adv)^2
    L_hinge = mean max(0, ||x_adv - x||_2 - c)                soft bound on the perturbation's L2 norm

Threat model: Linf or L2 ball of radius eps, intersected with [0, 1]. G's output is squashed into
the ball (eps * tanh for Linf; eps * tanh(r) * raw / r with r = ||raw||_2 for L2) and then goes
through `threat.project`, during training and at attack time alike, so the budget always holds.
A generator serves one threat model: eps and norm are part of its cache key.

Modes:
    "semi-white-box": G is trained against the target model itself (its gradients are used only
        while training G; at attack time the target is not queried).
    "distilled": black-box by distillation. A surrogate (the registered architecture `surrogate`,
        default the run's model, or smallcnn when that name is not a registered architecture) is
        trained on the target's PREDICTED labels over the training data; G is trained against it.
        This is the paper's static distillation; its dynamic variant (which also queries the target
        on x + G(x) while G trains) is not implemented.

Caching: G (and the surrogate) live under KARP_HOME/generators/, keyed by the target's checkpoint
sha256 (RunContext.checkpoint_sha256; without one, a sha256 of the model's state_dict), the model
type, the dataset, the seed, eps, norm and every option below. A corrupted file is retrained with a
warning (robustbench_karp.store.networks). `provenance(model)` names the generator's path and sha256.

The attack needs the run's training data: bind it first (`attack.bind(RunContext(...))`; the
harness does). It is deterministic on CPU given RunContext.seed and never draws from `gen`. The
target is used in the mode it is given (the harness gives eval mode); its .grad is never touched.
The harness calls `prepare` before the evaluation: the generator is trained there (outside the
evaluation's cost count, timed on its own), and its sha256 and recipe enter the EvalConfig. Called
directly, the attack trains it on the device of the first batch it attacks.

Arguments:
    mode (str): "semi-white-box" or "distilled". Default "semi-white-box".
    epochs (int): passes of G's training over the training data. Default 10.
    train_size (int | None): train on the first N training images (None: all). Default None.
    batch_size (int): training batch size. Default 128.
    lr (float): Adam learning rate of G and D (betas 0.5, 0.999). Default 1e-3.
    width (int): channels of G's and D's first layer. Default 16.
    kappa (float): confidence of the C&W margin. Default 0.0.
    alpha (float): weight of the GAN loss. Default 0.1.
    beta (float): weight of the hinge loss. Default 0.1.
    c (float): hinge bound on ||delta||_2. Default 0.1.
    surrogate (str | None): distilled mode's architecture (None: the run's model). Default None.
    surrogate_epochs (int): distilled mode's surrogate training epochs (Adam 1e-3). Default 5.

Shape: images (B, C, H, W) in [0, 1] with even H and W; labels (B,). Returns x_adv of the same shape.

Example:
    >>> attack = AdvGAN(epochs=5).bind(RunContext(dataset="mnist", model="smallcnn"))
    >>> x_adv = attack(model, x, y, ThreatModel("linf", 0.3), gen)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.attacks.base import Attack, check_positive, margin, register
from robustbench_karp.attacks.gan_training import gradient_step, seeded, training_batches
from robustbench_karp.data import DATASETS, ImageSet, load_split
from robustbench_karp.models import MODELS, create_model
from robustbench_karp.store import networks, portable_path
from robustbench_karp.store.identity import weights_sha256
from robustbench_karp.threat import Norm, ThreatModel
from robustbench_karp.threat.context import RunContext

MODES = ("semi-white-box", "distilled")


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.InstanceNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.InstanceNorm2d(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


class PerturbationGenerator(nn.Module):
    """x (B, C, H, W) in [0, 1] -> delta inside the threat's ball. No batch norm: train and eval modes agree."""

    def __init__(self, channels: int, width: int, threat: ThreatModel):
        super().__init__()
        self.norm, self.eps = threat.norm, threat.eps
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.InstanceNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * w), nn.ReLU(),  # (B, 2w, H/2, W/2)
            _Residual(2 * w), _Residual(2 * w),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.InstanceNorm2d(w), nn.ReLU(),  # (B, w, H, W)
            nn.Conv2d(w, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net(2 * x - 1)  # (B, C, H, W), unbounded
        if self.norm is Norm.LINF:
            return self.eps * torch.tanh(raw)
        r = raw.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return self.eps * torch.tanh(r) * raw / r  # ||delta||_2 = eps * tanh(r) < eps


def discriminator(channels: int, width: int) -> nn.Module:
    """x (B, C, H, W) -> (B,) realness score: a patch critic averaged over positions."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * width), nn.LeakyReLU(0.2),
        nn.Conv2d(2 * width, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(0),  # (B, 1, h, w) -> (B,)
    )


@register("advgan")
@dataclass(frozen=True)
class AdvGAN(Attack):
    mode: str = "semi-white-box"
    epochs: int = 10
    train_size: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    width: int = 16
    kappa: float = 0.0
    alpha: float = 0.1
    beta: float = 0.1
    c: float = 0.1
    surrogate: str | None = None
    surrogate_epochs: int = 5
    context: RunContext | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown advgan mode {self.mode!r}; valid: {', '.join(MODES)}")
        check_positive(epochs=self.epochs, train_size=self.train_size, batch_size=self.batch_size, width=self.width,
                       surrogate_epochs=self.surrogate_epochs)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for key in ("kappa", "alpha", "beta", "c"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.surrogate is not None:
            MODELS.get(self.surrogate)  # unknown architecture: UnknownName listing the valid ones

    def bind(self, context: RunContext) -> AdvGAN:
        bound = dataclasses.replace(self)
        object.__setattr__(bound, "context", context)
        return bound

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        delta = self.perturbation(model, x, threat)  # (B, C, H, W) inside the ball
        return threat.project(x + delta, x).detach()

    def perturbation(self, model, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """G(x): the generator's perturbation before projection (training G first if it is not cached)."""
        net = self.generator(model, threat, x.device)
        with torch.no_grad():
            return net(x)

    # --- the generator and its cache --------------------------------------------------------

    def _context(self) -> RunContext:
        if self.context is not None and not self.context.dataset:
            raise ValueError("advgan trains its generator on a dataset's training split: evaluate with dataset= "
                             "(the images x, y alone name no training data)")
        if self.context is None:
            raise ValueError("advgan trains its generator on the run's training data, so it needs a run context: "
                             "call attack.bind(RunContext(dataset=..., model=..., seed=...)) first (the harness does)")
        return self.context

    def _run_key(self, model) -> dict[str, Any]:
        ctx = self._context()
        target = {"sha256": ctx.checkpoint_sha256 or weights_sha256(model), "type": type(model).__qualname__}
        if getattr(model, "preprocess", None) is not None:
            target["preprocess"] = repr(model.preprocess)
        return {"attack": self.config(), "dataset": ctx.dataset, "model": ctx.model, "seed": ctx.seed, "target": target}

    def _generator_key(self, model, threat: ThreatModel) -> tuple[Path, dict[str, Any], dict[str, Any]]:
        """(cache path, hashed config, run key) of the generator for this target and threat model."""
        run = self._run_key(model)
        config = {"kind": "advgan-generator", **run, "norm": threat.norm.value, "eps": threat.eps}
        return networks.network_path(f"advgan-{self._context().dataset}-{self.mode}", config), config, run

    def generator(self, model, threat: ThreatModel, device: torch.device) -> nn.Module:
        """The trained generator for (target, threat), on device: memoized, cached on disk, or trained now."""
        ctx = self._context()
        path, config, run = self._generator_key(model, threat)
        spec = DATASETS.get(ctx.dataset)
        build = lambda: seeded(lambda: PerturbationGenerator(spec.in_channels, self.width, threat), ctx.seed)
        train = lambda net: self._train(net, model, threat, run, device)
        net, _ = networks.obtain(path, config, build, train, device)
        return net

    def prepare(self, model, device: torch.device) -> dict[str, Any] | None:
        """Train (or load) the generator, and the surrogate, before the evaluation: their sha256 and recipes enter
        the EvalConfig (a generator trained on other hardware is other weights, so another evaluation)."""
        threat = self._context().threat
        if threat is None:
            raise ValueError("advgan needs the run's threat model to prepare its generator (bind a RunContext with threat)")
        net = self.generator(model, threat, device)
        _, config, run = self._generator_key(model, threat)
        # the weights' canonical hash, not the file's: torch.save writes a fresh serialization id into every file
        out = {"generator": {"sha256": weights_sha256(net), "recipe": config}}
        if self.mode == "distilled":
            data, n = self._training_data()
            _, surrogate_config, _ = self._surrogate_path(run)
            out["surrogate"] = {"sha256": weights_sha256(self._surrogate(model, data, n, run, device)),
                                "recipe": surrogate_config}
        return out

    def provenance(self, model) -> dict[str, Any]:
        """The generator (and surrogate) this run's threat model uses, with the sha256 recorded in the cache."""
        if self.context is None or self.context.threat is None:
            return {}
        threat = self.context.threat
        path, _, run = self._generator_key(model, threat)
        facts = {"generator_sha256": networks.recorded_sha256(path), "generator_path": portable_path(path), "mode": self.mode,
                 "norm": threat.norm.value, "eps": threat.eps}
        if self.mode == "distilled":
            surrogate = self._surrogate_path(run)[0]
            facts |= {"surrogate_path": portable_path(surrogate), "surrogate_sha256": networks.recorded_sha256(surrogate)}
        return facts

    def _training_data(self) -> tuple[ImageSet, int]:
        ctx = self._context()
        data = load_split(DATASETS.get(ctx.dataset), train=True, data_dir=ctx.data_dir, download=ctx.download)
        n = len(data) if self.train_size is None else self.train_size
        if n > len(data):
            raise ValueError(f"advgan train_size={n} but the {ctx.dataset} training split has {len(data)} images")
        return data, n

    def _train(self, net: nn.Module, model, threat: ThreatModel, run: dict, device: torch.device) -> None:
        ctx = self._context()
        data, n = self._training_data()
        target = model if self.mode == "semi-white-box" else self._surrogate(model, data, n, run, device)
        disc = seeded(lambda: discriminator(DATASETS.get(ctx.dataset).in_channels, self.width), ctx.seed + 1).to(device)
        opt_g = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(disc.parameters(), lr=self.lr, betas=(0.5, 0.999))
        for x, y in training_batches(data, n, self.batch_size, self.epochs, ctx.seed, f"AdvGAN generator ({self.mode})"):
            x, y = x.to(device), y.to(device)
            x_adv = threat.project(x + net(x), x)  # the same bounded, projected point the attack returns
            d_loss = ((disc(x) - 1) ** 2).mean() + (disc(x_adv.detach()) ** 2).mean()
            gradient_step(opt_d, d_loss, disc)
            adv = (-margin(target(x_adv), y)).clamp(min=-self.kappa).mean()  # Z_y - max_{i != y} Z_i
            gan = ((disc(x_adv) - 1) ** 2).mean()
            hinge = ((x_adv - x).flatten(1).norm(dim=1) - self.c).clamp(min=0).mean()
            gradient_step(opt_g, adv + self.alpha * gan + self.beta * hinge, net)

    def _surrogate_path(self, run: dict) -> tuple[Path, dict[str, Any], str]:
        """(cache path, hashed config, architecture) of distilled mode's surrogate for this target."""
        ctx = self._context()
        arch = self.surrogate or (ctx.model if ctx.model in MODELS else "smallcnn")
        keep = ("train_size", "batch_size", "surrogate", "surrogate_epochs")
        config = {"kind": "advgan-surrogate", "arch": arch, **{k: v for k, v in run.items() if k != "attack"},
                  **{k: getattr(self, k) for k in keep}}
        return networks.network_path(f"surrogate-{ctx.dataset}-{arch}", config), config, arch

    def _surrogate(self, model, data: ImageSet, n: int, run: dict, device: torch.device) -> nn.Module:
        """Distillation: a surrogate trained on the target's predicted labels over the training data (cached)."""
        ctx = self._context()
        spec = DATASETS.get(ctx.dataset)
        path, config, arch = self._surrogate_path(run)
        build = lambda: seeded(lambda: create_model(arch, in_channels=spec.in_channels, num_classes=spec.num_classes,
                                                    input_size=spec.input_size, mean=spec.mean, std=spec.std), ctx.seed + 2)

        def train(net: nn.Module) -> None:
            with torch.no_grad():  # the target is only queried for labels: (n,) predictions
                labels = torch.cat([model(data.batch(idx)[0].to(device)).argmax(1).cpu()
                                    for idx in torch.arange(n).split(500)])
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            net.train()
            imitation = ImageSet(data.images[:n], labels)
            for x, y in training_batches(imitation, n, self.batch_size, self.surrogate_epochs, ctx.seed + 3,
                                         f"AdvGAN surrogate ({arch})"):
                gradient_step(opt, F.cross_entropy(net(x.to(device)), y.to(device)), net)
            net.eval()

        net, _ = networks.obtain(path, config, build, train, device)
        return net
