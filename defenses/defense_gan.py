"""Defense-GAN (Samangouei, Kabkab & Chellappa 2018, https://arxiv.org/abs/1805.06605).

A WGAN-GP generator G (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028) is trained on the
clean training images. At inference an input x is replaced by its projection onto G's range,
G(z*), with z* = argmin_z ||G(z) - x||^2 found by `steps` (L) steps of gradient descent (momentum
0.7 on the per-pixel mean squared error) from `restarts` (R) random starts z0 ~ N(0, I), keeping
the best restart per image; the classifier then classifies G(z*). L=200, R=10 are the paper's MNIST
values; one forward of the defended model costs L*R generator forward/backward passes per image.
The random starts come from the projection's own generator, seeded from RunContext.seed: every
forward draws fresh starts (the model is random), and a run is reproducible.

The classifier is trained by the `base` defense (`loss` and the recipe delegate to it) and its
checkpoint is the base defense's. `wrap` returns one module, DefenseGANModel, with `preprocess`
(the projection) and `classifier`, so any attack can target it. The projection runs on a detached
input, so gradients with respect to x are exactly zero (obfuscated gradients): an honest evaluation
needs BPDA, which `adaptive_attacks()` adds (with EOT) after the cheaper transfer attack.

Networks (no batch norm, so train and eval modes agree): G is Linear(z -> 2w x H/4 x W/4), then two
stride-2 transposed convolutions to (C, H, W) and a sigmoid, images in [0, 1]; the critic is two
stride-2 convolutions and a linear layer. WGAN-GP: gradient penalty 10, 5 critic steps per
generator step, Adam(gan_lr, betas (0.5, 0.9)). G is trained once per (dataset, GAN options, seed)
and cached in the store (sha256-verified, robustbench_karp.store.networks).

Threat model: whatever the evaluation uses; the defense adds no budget of its own.

Arguments:
    base (str): registered defense that trains the classifier. Default "standard".
    steps (int): L, gradient-descent steps of the projection. Default 200.
    restarts (int): R, random starts of the projection. Default 10.
    lr (float): learning rate of the projection's gradient descent. Default 10.0.
    epochs (int): GAN training epochs (critic passes over the training data). Default 10.
    train_size (int | None): train the GAN on the first N training images (None: all). Default None.
    latent_dim (int): dimension of z. Default 64.
    width (int): channels of G's last hidden layer and the critic's first. Default 32.
    batch_size (int): GAN training batch size. Default 64.
    gan_lr (float): Adam learning rate of G and the critic. Default 1e-4.

Shape: the wrapped model takes images (B, C, H, W) in [0, 1], H and W divisible by 4, and returns logits.

Example:
    >>> model = build_defense("defense-gan", {"steps": 100, "restarts": 4}).wrap(classifier, context)
    >>> logits = model(x)                      # classifier(G(z*))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.gan_training import gradient_step, seeded, training_batches
from robustbench_karp.data import DATASETS, ImageSet, load_split
from robustbench_karp.defenses.base import DEFENSES, Defense, Recipe, build_defense, register
from robustbench_karp.store import networks
from robustbench_karp.threat import ThreatModel, random_normal, random_uniform
from robustbench_karp.threat.context import RunContext

MOMENTUM = 0.7
CRITIC_ITERS = 5
GP_WEIGHT = 10.0


def generator(latent_dim: int, channels: int, size: int, width: int) -> nn.Module:
    """z (B, latent_dim) -> image (B, C, size, size) in [0, 1]."""
    s = size // 4
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * width * s * s), nn.ReLU(), nn.Unflatten(1, (2 * width, s, s)),
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),  # (B, w, size/2, size/2)
        nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Sigmoid(),  # (B, C, size, size)
    )


def critic(channels: int, size: int, width: int) -> nn.Module:
    """image (B, C, size, size) -> (B,) Wasserstein critic score."""
    s = size // 4
    return nn.Sequential(
        nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Flatten(), nn.Linear(2 * width * s * s, 1), nn.Flatten(0),
    )


class LatentProjection(nn.Module):
    """x -> G(z*), z* = argmin ||G(z) - x||^2 over L descent steps from R random starts (best restart per image).

    Random starts come from the module's own torch.Generator on the images' device (seeded at
    construction, reseeded per logical batch), never the global RNG. The output is joined to x with
    a zero weight, so autograd returns exact zeros for d output / d x instead of failing: that
    vanishing gradient is what BPDA gets around.
    """

    def __init__(self, gan: nn.Module, latent_dim: int, steps: int, restarts: int, lr: float, seed: int):
        super().__init__()
        self.generator = gan
        self.latent_dim, self.steps, self.restarts, self.lr = latent_dim, steps, restarts, lr
        self.seed, self.rng = seed, None  # the generator lives on the images' device, made at the first search

    def reseed(self, seed: int) -> None:
        """Restart the random starts from seed: the engine gives each logical batch its own (seed, batch) stream."""
        self.seed, self.rng = seed, None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.rng is None or self.rng.device != device:  # random starts are drawn on the device, never copied over
            self.rng = torch.Generator(device=device).manual_seed(self.seed)
        return self.rng

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, steps={self.steps}, restarts={self.restarts}, lr={self.lr}"

    def search(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (R, B, latent) after L steps, z0 (R, B, latent) the random starts) for images x (B, C, H, W)."""
        x = x.detach()
        target = x.unsqueeze(0).expand(self.restarts, *x.shape).flatten(0, 1)  # (R*B, C, H, W), restart-major
        z0 = random_normal((len(target), self.latent_dim), self._generator(x.device), x)  # (R*B, latent)
        z, velocity = z0.clone(), torch.zeros_like(z0)
        with torch.enable_grad():  # also inside the harness's no_grad prediction
            for _ in range(self.steps):
                z.requires_grad_(True)
                error = (self.generator(z) - target).pow(2).flatten(1).mean(1)  # (R*B,) per-image MSE
                (g,) = torch.autograd.grad(error.sum(), z)  # rows are independent: each z gets its own gradient
                velocity = MOMENTUM * velocity + g
                z = z.detach() - self.lr * velocity
        return z.view(self.restarts, len(x), -1), z0.view(self.restarts, len(x), -1)

    def reconstruct(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(best G(z) per image (B, C, H, W), its squared error (B,)) over the R candidates z (R, B, latent)."""
        with torch.no_grad():
            images = self.generator(z.flatten(0, 1)).view(self.restarts, *x.shape)  # (R, B, C, H, W)
            error = (images - x.detach()).pow(2).flatten(2).sum(2)  # (R, B)
            best = error.argmin(0)  # (B,)
            pick = torch.arange(len(x), device=x.device)
            return images[best, pick], error[best, pick]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, _ = self.search(x)
        projected, _ = self.reconstruct(x, z)
        return projected + 0.0 * x


class DefenseGANModel(nn.Module):
    """classifier(preprocess(x)): the purifier protocol BPDA and transfer attacks rely on."""

    def __init__(self, preprocess: nn.Module, classifier: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1] -> (B, classes)
        return self.classifier(self.preprocess(x))


def train_wgan_gp(gan: nn.Module, disc: nn.Module, data: ImageSet, n: int, opts: DefenseGAN, seed: int,
                  device: torch.device) -> None:
    """WGAN-GP: a generator step after every CRITIC_ITERS critic steps, one critic step per real batch."""
    rng = torch.Generator().manual_seed(seed)
    opt_g = torch.optim.Adam(gan.parameters(), lr=opts.gan_lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=opts.gan_lr, betas=(0.5, 0.9))
    batches = training_batches(data, n, opts.batch_size, opts.epochs, seed, "Defense-GAN WGAN-GP")
    for step, (x, _) in enumerate(batches):
        x = x.to(device)  # (B, C, H, W) real images
        fake = gan(random_normal((len(x), opts.latent_dim), rng, x)).detach()
        mix = random_uniform((len(x), 1, 1, 1), rng, x)
        between = (mix * x + (1 - mix) * fake).requires_grad_(True)
        (g,) = torch.autograd.grad(disc(between).sum(), between, create_graph=True)
        penalty = (g.flatten(1).norm(dim=1) - 1).pow(2).mean()
        gradient_step(opt_d, disc(fake).mean() - disc(x).mean() + GP_WEIGHT * penalty, disc)
        if (step + 1) % CRITIC_ITERS == 0:
            gradient_step(opt_g, -disc(gan(random_normal((len(x), opts.latent_dim), rng, x))).mean(), gan)


@register("defense-gan")
@dataclass(frozen=True)
class DefenseGAN(Defense):
    base: str = "standard"
    steps: int = 200
    restarts: int = 10
    lr: float = 10.0
    epochs: int = 10
    train_size: int | None = None
    latent_dim: int = 64
    width: int = 32
    batch_size: int = 64
    gan_lr: float = 1e-4

    def __post_init__(self):
        for key in ("steps", "restarts", "epochs", "latent_dim", "width", "batch_size", "train_size"):
            value = getattr(self, key)
            if value is not None and not value >= 1:
                label = {"steps": "steps (L)", "restarts": "restarts (R)"}.get(key, key)
                raise ValueError(f"defense-gan: {label} must be >= 1, got {value}")
        for key in ("lr", "gan_lr"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ValueError(f"defense-gan: {key} must be a positive number, got {getattr(self, key)}")
        if self.base == self.name:
            raise ValueError("defense-gan: base must be another defense (the one that trains the classifier)")
        DEFENSES.get(self.base)  # unknown name: UnknownName listing the valid ones

    @property
    def adversarial(self) -> bool:
        return self.classifier_defense().adversarial

    def recipe_for(self, dataset: str) -> Recipe:
        return self.classifier_defense().recipe_for(dataset)

    def classifier_defense(self) -> Defense:
        return build_defense(self.base)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator):
        return self.classifier_defense().loss(model, x, y, threat, gen)

    def wrap(self, classifier: nn.Module, context: RunContext) -> DefenseGANModel:
        gan = self.generator(context)
        projection = LatentProjection(gan, self.latent_dim, self.steps, self.restarts, self.lr, context.seed)
        return DefenseGANModel(projection, classifier)

    def gan_config(self, context: RunContext) -> dict[str, Any]:
        keep = ("epochs", "train_size", "latent_dim", "width", "batch_size", "gan_lr")
        return {"kind": "defense-gan-wgan-gp", "dataset": context.dataset, "seed": context.seed,
                "critic_iters": CRITIC_ITERS, "gp_weight": GP_WEIGHT, **{k: getattr(self, k) for k in keep}}

    def generator(self, context: RunContext) -> nn.Module:
        """G for the run's dataset: from the store (sha256-verified) or trained now; a private copy."""
        spec = DATASETS.get(context.dataset)
        if spec.input_size % 4:
            raise ValueError(f"defense-gan needs an image side divisible by 4; {spec.name} has {spec.input_size}")
        config = self.gan_config(context)
        build = lambda: seeded(lambda: generator(self.latent_dim, spec.in_channels, spec.input_size, self.width),
                               context.seed)

        def train(gan: nn.Module) -> None:
            data = load_split(spec, train=True, data_dir=context.data_dir, download=context.download)
            n = len(data) if self.train_size is None else self.train_size
            if n > len(data):
                raise ValueError(f"defense-gan train_size={n} but the {spec.name} training split has {len(data)} images")
            disc = seeded(lambda: critic(spec.in_channels, spec.input_size, self.width), context.seed + 1)
            train_wgan_gp(gan, disc.to(context.device), data, n, self, context.seed, context.device)

        path = networks.network_path(f"defense-gan-{spec.name}", config)
        gan, _ = networks.obtain(path, config, build, train, context.device)
        private = build()  # the cached module is shared by the process; the wrapped model owns its own copy
        private.load_state_dict(gan.state_dict())
        return private.requires_grad_(False).to(context.device)

    def adaptive_attacks(self) -> list:
        return [build_attack("transfer-pgd"), build_attack("bpda-pgd", {"samples": 2})]
