"""`csi`: contrastive learning on distributionally shifted instances (Tack et al., NeurIPS 2020), supervised
(SupCSI), in two stages of one run.

Stage 1, `contrastive` (`csi_epochs` epochs): every image of a batch gets two views (`views.rotated_views`),
each flipped or not, then rotated by 0, 90, 180 and 270 degrees (the shifted instances), then each turned
image its own SimCLR crop and colours (`views.simclr_view`: resized crop, colour jitter of spread
`csi_jitter`, greyscale, as batched tensor ops; single-channel data needs `csi_jitter=0`, no colour
distortion; the flip comes first as in the reference code); the backbone's z goes through a projection
head (two linear layers, 128 outputs, normalised), and the loss is the supervised contrastive loss (Khosla
et al. 2020, eq. 2, "L_out") with temperature `csi_temperature`, whose labels are the joint (known class,
rotation) pairs: SupCSI's loss alone, as in the reference code. `csi_rotation_weight` > 0 adds that weight
times the cross-entropy of the 4-way rotation head on z (the shift classification of the paper's
unlabelled CSI, lambda = 1 there), an option that is not SupCSI. Curve: `train/contrastive_loss`. Stage 2,
`heads` (`epochs` epochs): the backbone is frozen (and its batch norm in eval mode) and three linear heads
on z are trained with cross-entropy: the K-way class head (upright images, the usual crop and flip), the
4K-way joint (class, rotation) head and the 4-way rotation head (all four rotations); model selection and
early stopping read the class head's validation accuracy, as for the classifier. Curves: `train/loss`
(their sum), `train/class_loss`, `train/joint_loss`, `train/rotation_loss`, `val/acc`. `csi_optimizer` is
`lars` (the paper's, You et al. 2017: SGD with momentum whose step per layer is scaled by |w| / |grad|,
trust coefficient 0.001; not for biases and norms) or `sgd`; both stages use `lr` and `batch_size`. The
paper trains 700 + 100 epochs at batch 512 (on GPUs); the defaults here, 10 + 30 epochs at batch 128, fit a
CPU: each contrastive step runs 8 views of every image (4 rotations x 2), so an epoch of stage 1 costs about
8 epochs of the classifier (`max_hours` stops a run whose first epoch shows it cannot finish).

Scores (higher = more anomalous): `csi`, 1 - max softmax of the class head; `csi_ens`, 1 - max over classes
of the softmax of the joint head's class block for rotation k on the image turned by k, the blocks averaged
over the four rotations (the paper's "CSI-ens"); `csi_unlabeled`, the negated detection score of the paper
(sec. 2.2, eq. 7): per image and rotation k, the projection z_k and the rotation head's raw logit of k are
averaged over `csi_test_views` views (flip, turn by k, SimCLR crop and colours; 0: 10 on a GPU, 2 on a
CPU); the score sums over k the largest cosine similarity of z_k to the nominal training images' averaged
projections turned by k, times |z_k|, plus that logit, each term weighted by one over its mean over the
nominal training images (the reference code's weights: the mean norm, the mean logit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_repr.data.pipeline import Normalizer
from anomaly_repr.errors import ConfigError, DataError
from anomaly_repr.methods.base import Autocast, Calibration, Method, Stage, register_method
from anomaly_repr.methods.lars import Lars
from anomaly_repr.methods.views import ROTATIONS, rotated_views, rotations
from anomaly_repr.models.backbones import ModelOutput, OpenSetNet, build_backbone
from anomaly_repr.scoring.outputs import batches
from anomaly_repr.scoring.scorers import FunctionScorer, msp, register_scorer

if TYPE_CHECKING:
    import optuna

    from anomaly_repr.config import ExperimentConfig
    from anomaly_repr.methods.base import SearchBounds


PROJECTION = 128  # width of the projection head's output
TEMPERATURE_RANGE = (0.03, 0.5)  # `tune --target csi`, log-uniform
CHUNK = 1024  # test rows against all training features at once in the similarity search


class CsiNet(OpenSetNet):
    """Backbone, class head (the logits), 4K-way joint head, projection head and rotation head on z."""

    def __init__(self, backbone: nn.Module, z_dim: int, num_classes: int):
        super().__init__(backbone, z_dim, nn.Linear(z_dim, num_classes))
        self.joint = nn.Linear(z_dim, ROTATIONS * num_classes)  # class c, rotation k -> output c * 4 + k
        self.projection = nn.Sequential(nn.Linear(z_dim, z_dim), nn.ReLU(inplace=True), nn.Linear(z_dim, PROJECTION))
        self.rotation = nn.Linear(z_dim, ROTATIONS)

    def forward_head(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=self.head(z), z=z, extras={
            "joint": self.joint(z), "projection": self.projection(z), "rotation": self.rotation(z)})


def shift_labels(n: int, device: torch.device) -> torch.Tensor:
    """(4N,): the rotation of each image of `rotations(x)` for a batch of N."""
    return torch.arange(ROTATIONS, device=device).repeat_interleave(n)


def joint_labels(y: torch.Tensor) -> torch.Tensor:
    """(4N,): the joint (class, rotation) label of each image of `rotations(x)`: class c turned by k is c * 4 + k."""
    return y.repeat(ROTATIONS) * ROTATIONS + torch.arange(ROTATIONS, device=y.device).repeat_interleave(len(y))


def rotation_ensemble(joint: torch.Tensor) -> torch.Tensor:
    """CSI-ens from the joint head's logits on `rotations(x)` ((4N, 4K)): 1 - the largest class probability of
    the softmax of the class block of rotation k on the image turned by k, averaged over k (the block logits
    are averaged, then the softmax taken, as the reference code does)."""
    n = len(joint) // ROTATIONS
    joint = joint.float().view(ROTATIONS, n, -1, ROTATIONS)  # rotation of the input, class, rotation
    blocks = torch.stack([joint[k, :, :, k] for k in range(ROTATIONS)])  # (4, n, K)
    return 1 - F.softmax(blocks.mean(dim=0), dim=-1).amax(dim=1)


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al. 2020, eq. 2: for each anchor, the mean over its positives (same label, itself excluded)
    of -log softmax of the similarities over every other sample; features normalised (N, P)."""
    sim = features @ features.T / temperature
    own = torch.eye(len(features), dtype=torch.bool, device=features.device)
    sim = sim.masked_fill(own, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~own
    return -(log_prob.masked_fill(~positive, 0).sum(1) / positive.sum(1).clamp_min(1)).mean()


def unlabeled_score(projections: torch.Tensor, logits: torch.Tensor, reference: torch.Tensor,
                    weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The paper's detection score (higher = more nominal), (N,): sum over rotations k of w_sim[k] times the
    largest dot product of the projection z_k (N, 4, P) with the normalised bank of rotation k (M, 4, P),
    i.e. cosine similarity times |z_k|, plus w_rot[k] times the rotation head's logit of k (N, 4)."""
    w_sim, w_rot = weights
    similarity = torch.empty(logits.shape)
    for k in range(ROTATIONS):
        for start in range(0, len(projections), CHUNK):
            similarity[start:start + CHUNK, k] = (projections[start:start + CHUNK, k] @ reference[:, k].T).amax(dim=1)
    return (similarity * w_sim + logits * w_rot).sum(dim=1)


@register_method("csi")
class Csi(Method):
    extra_outputs = frozenset({"csi_ens", "csi_unlabeled"})
    tune_scorer = "csi_ens"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.stage = 0  # the stage being trained (`begin_stage`)

    @classmethod
    def check(cls, cfg: ExperimentConfig) -> None:
        if cfg.csi_epochs < 1 or cfg.csi_test_views < 0 or not cfg.csi_temperature > 0 \
                or cfg.csi_rotation_weight < 0:
            raise ConfigError("csi_epochs must be positive, csi_temperature positive, csi_test_views and "
                              "csi_rotation_weight not negative")
        if not 0 <= cfg.csi_jitter <= 1:
            raise ConfigError(f"csi_jitter must be in [0, 1] (brightness, contrast and saturation factors in "
                              f"[1 - csi_jitter, 1 + csi_jitter]), got {cfg.csi_jitter}")

    @classmethod
    def settle(cls, cfg: Any) -> dict:
        if cfg.mixup or cfg.cutmix:
            raise ConfigError("method=csi pairs images by their labels in the contrastive loss; mixup and cutmix "
                              "mix the labels: set them to 0")
        if cfg.warmup_epochs >= cfg.csi_epochs:
            raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs}) warms up CSI's contrastive stage and must be "
                              f"shorter than its csi_epochs ({cfg.csi_epochs})")
        return {}

    def check_data(self, shape: tuple[int, int, int]) -> None:
        if shape[0] != 3 and self.cfg.csi_jitter > 0:
            raise DataError(f"method=csi's colour jitter needs RGB images, but the {self.cfg.dataset} images have "
                            f"{shape[0]} channel(s); set csi_jitter=0")

    def build(self, num_classes: int, in_channels: int, image_size: int) -> OpenSetNet:
        backbone, z_dim = build_backbone(self.cfg.arch, in_channels)
        return CsiNet(backbone, z_dim, num_classes)

    # --- training ---
    def stages(self) -> list[Stage]:
        return [Stage("contrastive", self.cfg.csi_epochs, selects=False, loss_name="train/contrastive_loss"),
                Stage("heads", self.cfg.epochs)]

    def start(self, normalizer: Normalizer, device: torch.device) -> None:
        self.normalizer = normalizer
        self.generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        self.sums = dict.fromkeys(("class_loss", "joint_loss", "rotation_loss", "steps"), 0.0)

    def begin_stage(self, model: nn.Module, index: int) -> None:
        self.stage = index
        if index == 1:
            model.backbone.eval()  # type: ignore[union-attr]  # frozen: its batch norm keeps its statistics

    def param_groups(self, model: nn.Module) -> list[dict]:
        if self.stage == 0:
            return super().param_groups(model)
        heads = [p for name, p in model.named_parameters() if name.startswith(("head.", "joint.", "rotation."))]
        return [{"params": [p for p in heads if p.ndim > 1], "weight_decay": self.cfg.weight_decay},
                {"params": [p for p in heads if p.ndim <= 1], "weight_decay": 0.0}]

    def optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        if self.stage == 0 and self.cfg.csi_optimizer == "lars":
            return Lars(param_groups, lr=self.cfg.lr, momentum=self.cfg.momentum)
        return super().optimizer(param_groups)

    def train_step(self, model: OpenSetNet, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   autocast: Autocast) -> torch.Tensor:
        assert isinstance(model, CsiNet)
        cfg, n = self.cfg, len(x)
        turned = rotations(x)
        joint = joint_labels(y)
        if self.stage == 0:
            # 2 views of 4 rotations. A view's flip comes before the rotations (the reference code's order): a
            # flip after a 90-degree turn is a flipped 270-degree turn, and on flip-symmetric data the shifted
            # classes (c, 1) and (c, 3) would become one distribution that the loss must push apart.
            batch = torch.cat(list(rotated_views(x, self.normalizer, 2, self.generator, cfg.csi_jitter)))
            with autocast():
                out = model(batch.contiguous(memory_format=torch.channels_last))
            features = F.normalize(out.extras["projection"].float(), dim=1)
            loss = supcon_loss(features, joint.repeat(2), cfg.csi_temperature)
            if cfg.csi_rotation_weight:  # unlabelled CSI's shift classification: an option, not SupCSI
                loss = loss + cfg.csi_rotation_weight * F.cross_entropy(out.extras["rotation"].float(),
                                                                        shift_labels(n, x.device).repeat(2))
        else:
            with torch.no_grad(), autocast():
                z = model.forward_features(turned.contiguous(memory_format=torch.channels_last)).float()
            losses = {"class_loss": F.cross_entropy(model.head(z[:n]), y, label_smoothing=cfg.label_smoothing),
                      "joint_loss": F.cross_entropy(model.joint(z), joint),
                      "rotation_loss": F.cross_entropy(model.rotation(z), shift_labels(n, x.device))}
            loss = sum(losses.values(), torch.zeros((), device=x.device))
            for name, value in losses.items():
                self.sums[name] += float(value.detach())
            self.sums["steps"] += 1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def train_state(self) -> dict[str, Any]:
        return {"views": self.generator.get_state()}  # the SimCLR views' random state

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["views"].cpu())

    def epoch_metrics(self) -> dict[str, float]:
        steps = self.sums.pop("steps")
        out = {f"train/{name}": value / steps for name, value in self.sums.items()} if steps else {}
        self.sums = dict.fromkeys(("class_loss", "joint_loss", "rotation_loss", "steps"), 0.0)
        return out

    # --- extraction and scores ---
    @torch.no_grad()
    def _features(self, model: CsiNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                  count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image and rotation k (on the image turned by k), averaged over `count` views (0: the image
        itself): the projection (N, 4, P), not normalised, and the rotation head's raw logit of k (N, 4)."""
        model.eval()
        generator = torch.Generator(device=device).manual_seed(self.cfg.seed)
        projections, logits = [], []
        for x in batches(images, normalizer, device, 256):
            turned = [rotations(x)] if count == 0 else rotated_views(x, normalizer, count, generator,
                                                                     self.cfg.csi_jitter)
            proj_sum, logit_sum = torch.zeros(()), torch.zeros(())
            for view in turned:
                out = model(view.contiguous(memory_format=torch.channels_last))
                proj_sum = proj_sum + out.extras["projection"].float().view(ROTATIONS, len(x), -1).transpose(0, 1)
                shift = out.extras["rotation"].float().view(ROTATIONS, len(x), ROTATIONS)
                logit_sum = logit_sum + torch.stack([shift[k, :, k] for k in range(ROTATIONS)], dim=1)
            projections.append((proj_sum / max(count, 1)).cpu())
            logits.append((logit_sum / max(count, 1)).cpu())
        return torch.cat(projections), torch.cat(logits)

    def calibrate(self, model: OpenSetNet, nominal_val: torch.Tensor, normalizer: Normalizer, device: torch.device,
                  nominal_train: torch.Tensor) -> Calibration:
        """The bank of `csi_unlabeled`: the nominal training images' projections, averaged over as many views
        as a test image gets, and the weights of its two terms (one over their means over the bank)."""
        assert isinstance(model, CsiNet)
        projections, logits = self._features(model, nominal_train, normalizer, device, self.test_views(device))
        weights = (1 / projections.norm(dim=-1).mean(dim=0), 1 / logits.mean(dim=0))
        return Calibration(values={"reference": F.normalize(projections, dim=-1), "weights": weights},
                           metrics={f"csi/weight_{name}_{k}": float(w[k])
                                    for name, w in zip(("sim", "rot"), weights, strict=True) for k in range(ROTATIONS)})

    def test_views(self, device: torch.device) -> int:
        return self.cfg.csi_test_views or (10 if device.type == "cuda" else 2)

    def extra_passes(self, model: OpenSetNet, images: torch.Tensor, normalizer: Normalizer, device: torch.device,
                     calibration: Calibration) -> dict[str, np.ndarray]:
        assert isinstance(model, CsiNet)
        with torch.no_grad():
            ens = torch.cat([rotation_ensemble(model(rotations(x).contiguous(memory_format=torch.channels_last))
                                               .extras["joint"]).cpu()
                             for x in batches(images, normalizer, device, 256)])
        projections, logits = self._features(model, images, normalizer, device, self.test_views(device))
        score = unlabeled_score(projections, logits, calibration.values["reference"], calibration.values["weights"])
        return {"csi_ens": ens.numpy(), "csi_unlabeled": (-score).numpy()}

    # --- tuning ---
    def suggest(self, trial: optuna.Trial, tcfg: SearchBounds) -> dict[str, Any]:
        return {"csi_temperature": trial.suggest_float("csi_temperature", *TEMPERATURE_RANGE, log=True)}

    def talk_values(self, tcfg: SearchBounds) -> list[dict[str, Any]]:
        return [{"csi_temperature": 0.07}]  # the paper's


register_scorer("csi", "method")(lambda cfg: FunctionScorer(lambda o: msp(o.logits), requires=("logits", "csi_ens")))
register_scorer("csi_ens", "method")(lambda cfg: FunctionScorer(lambda o: o.csi_ens, requires=("csi_ens",)))
register_scorer("csi_unlabeled", "method")(lambda cfg: FunctionScorer(lambda o: o.csi_unlabeled, ("csi_unlabeled",)))
