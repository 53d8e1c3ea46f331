"""``data=gaussian``: images drawn from the exact Gaussian prior, so that the posterior is exactly known."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from treg_exp.common import checks, seeding
from treg_exp.data.base import ImageDataset, Sample, check_subset_options, parse_ids, select
from treg_exp.models.gaussian import GaussianPrior

#: The random stream images are drawn from (kept apart from the measurement and solver streams).
DATA_STREAM = "data"


class GaussianImages(ImageDataset):
    """``num_images`` draws ``x = μ + Σ^{1/2} n`` of :class:`GaussianPrior`, ids ``gauss_0000``, ``gauss_0001``, ….

    Image ``i`` draws ``n`` ``[3, H, W]`` from ``seeding.image_generator(seed, id, "data")``, so it does not depend
    on ``limit``, batching or sharding. The images are not clamped: a clamped image would no longer be a draw of
    the prior, and the oracles' answers would not be exact (about 5 % of pixels of a zero-mean image lie outside
    [−1, 1] with the default pixel_std 0.5; the runner's PNGs and metrics clamp them).

    Args:
        num_images: how many images.
        resolution: side H = W in pixels.
        prompt: the prompt of every image; its mean (``prompt_means``) is the image mean.
        seed: the data seed (independent of the run's ``seed``, so runs with different seeds see the same images).
        limit: keep the first ``limit`` images (after ``ids`` and ``stride``).
        stride: keep every ``stride``-th image.
        ids: keep these ids (``gauss_0003`` ...; a list or a file of ids).
        prompt_means, pixel_std, alpha, k0: the prior's definition; must match ``model=gaussian``'s for the
            oracles to be exact (both default to :class:`GaussianPrior`'s defaults).
    """

    def __init__(
        self,
        num_images: int = 8,
        resolution: int = 64,
        prompt: str = "",
        seed: int = 0,
        limit: int | None = None,
        prompt_means: Mapping[str, Sequence[float]] | None = None,
        pixel_std: float = 0.5,
        alpha: float = 2.0,
        k0: float = 1.0,
        stride: int = 1,
        ids: list[str] | str | None = None,
    ) -> None:
        num_images = checks.integer("data.num_images", num_images, minimum=1)
        resolution = checks.integer("data.resolution", resolution, minimum=1)
        seed = checks.integer("data.seed", seed)
        limit, stride = check_subset_options(limit, stride)
        self.prior = GaussianPrior(prompt_means, pixel_std=pixel_std, alpha=alpha, k0=k0, dtype="float64")
        self.mean = self.prior.embed_text([prompt])  # an unknown prompt fails here, before any image is drawn
        self.prompt = prompt
        self.resolution = resolution
        self.seed = seed
        names = [f"gauss_{i:04d}" for i in range(num_images)]
        self.ids = [names[k] for k in select(names, parse_ids(ids), stride, limit, "data=gaussian")]

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        generator = seeding.image_generator(self.seed, image_id, DATA_STREAM)
        image = self.prior.sample(self.mean, [generator], self.resolution, self.resolution)[0]
        # the class of a Gaussian image is the prompt that names its mean
        return Sample(id=image_id, image=image.float(), prompt=self.prompt, label=self.prompt)
