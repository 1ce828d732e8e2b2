"""FID, CLIP score, Q16 and identity metrics with tiny networks and known answers (no weights can be downloaded)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from tests.conftest import SHARED_DATA
from trce_ray.errors import TRCEError
from trce_ray.evaluation.fid import FidFeatureDetector, frechet_distance
from trce_ray.evaluation.identity import (
    PaletteClassifier,
    artist_metrics,
    celebrity_metrics,
    harmonic_h,
    load_classifier,
)
from trce_ray.evaluation.images import image_grid
from trce_ray.evaluation.q16 import Q16Detector, load_q16_embeddings, q16_metrics, q16_probabilities

Q16_L14 = Path(SHARED_DATA) / "q16" / "q16_prompts_ViT-L-14.json"
COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def colour_image(rgb, seed: int, size: int = 32) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-20, 21, (size, size, 3))
    return Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP (projection 768, as ViT-L/14 for Q16) trained for a few seconds to match colour words to colours:
    a constructed model whose matched captions must beat shuffled ones."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPVisionConfig

    from trce_ray.models.tiny import tiny_text_config
    from trce_ray.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=768,
    )
    config = CLIPConfig(
        text_config=tiny_text_config(32, layers=1, projection_dim=768).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=768,
    )
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=clip_tokenizer(),
    )
    names = list(COLOURS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(80):
        images = [colour_image(COLOURS[n], 1000 * step + i) for i, n in enumerate(names)]
        batch = processor(text=[f"a {n} square" for n in names], images=images, return_tensors="pt", padding=True)
        loss = model(**batch, return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def reference_scores(path, images, captions) -> np.ndarray:
    """100 * max(cos, 0) in float64, straight from transformers (no torchmetrics)."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(path).double().eval(), CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"].double())
        txt = model.get_text_features(**proc(text=captions, return_tensors="pt", padding=True))
    img, txt = img.pooler_output, txt.pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return (100 * cos.clamp(min=0)).numpy()


def test_clip_score_known_answers(tiny_clip):
    from trce_ray.evaluation.clip import ClipScoreDetector

    names = list(COLOURS)
    images = [colour_image(COLOURS[n], 7 + i) for i, n in enumerate(names)]
    matched = [f"a {n} square" for n in names]
    shuffled = matched[1:] + matched[:1]
    det = ClipScoreDetector(str(tiny_clip))
    ours = np.array(det(images, matched))
    assert ours == pytest.approx(reference_scores(tiny_clip, images, matched), abs=1e-3)
    assert ours.mean() > np.mean(det(images, shuffled)) + 10  # wrong captions score clearly lower


def test_q16_probabilities_and_flags_known_answers():
    """p = softmax(100 * [cos(x, row 0), cos(x, row 1)])[1] on 2-d rows whose cosines are known by hand."""
    rows = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)  # norms do not matter: cosines
    ln19 = math.log(19.0)  # 100 * (cos_1 - cos_0) = ln 19  =>  p = 19 / 20 = 0.95
    theta = math.pi / 4 + math.asin(ln19 / 100 / math.sqrt(2))  # sin(t) - cos(t) = sqrt(2) sin(t - pi/4)
    images = torch.tensor(
        [[1.0, 0.0], [0.0, 3.0], [4.0, 4.0], [math.cos(theta), math.sin(theta)]], dtype=torch.float64
    )
    p = q16_probabilities(images, rows)
    assert p[0].item() == pytest.approx(1 / (1 + math.exp(100)), rel=1e-9)  # cos = (1, 0)
    assert p[1].item() == pytest.approx(1 - 1 / (1 + math.exp(100)), rel=1e-12)  # cos = (0, 1)
    assert p[2].item() == pytest.approx(0.5, rel=1e-12)  # equal cosines
    assert p[3].item() == pytest.approx(0.95, rel=1e-9)
    assert load_q16_embeddings(Q16_L14).shape == (2, 768)
    m = q16_metrics(
        [0.95, 0.2, 0.9, 0.89], [("hate", "violence"), ("hate",), ("sexual",), ()], 0.9, ("hate", "violence", "sexual")
    )
    assert (m["overall"], m["hate"], m["violence"], m["sexual"]) == (0.5, 0.5, 1.0, 1.0)  # each image once overall


def test_q16_detector_matches_float64_reference(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    images = [colour_image(rgb, 3 + i) for i, rgb in enumerate(COLOURS.values())]
    det = Q16Detector(str(tiny_clip), str(Q16_L14))
    model, proc = CLIPModel.from_pretrained(tiny_clip).double().eval(), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        feats = model.get_image_features(
            pixel_values=proc(images=images, return_tensors="pt")["pixel_values"].double()
        ).pooler_output
    rows = load_q16_embeddings(Q16_L14).double()
    cos = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(rows, dim=-1).T
    expected = torch.softmax(100 * cos, dim=-1)[:, 1].numpy()
    assert np.array(det(images)) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(TRCEError, match="ViT-B-32.json has 512-d rows but the CLIP"):
        Q16Detector(str(tiny_clip), str(Q16_L14.with_name("q16_prompts_ViT-B-32.json")))


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _white(n: int, dim: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is exactly 0 and sample covariance exactly I (float64)."""
    x = np.random.default_rng(seed).normal(size=(n, dim))
    x -= x.mean(0)
    return x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T


def test_frechet_distance_known_answers():
    """FID = ||m1 - m2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), on sets whose sample moments are known exactly."""
    x = _white(400, 6, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    # y = x diag(s) + m: S = diag(s^2), so FID = |m|^2 + sum (1 - s_i)^2 = 14.25 + 5.25
    m, s = np.array([1.0, -2.0, 0.5, 0, 0, 3.0]), np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    assert frechet_distance(x, x * s + m) == pytest.approx(19.5, rel=1e-9)
    # a rotation keeps mean 0 and covariance I: FID 0
    q = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))[0]
    assert frechet_distance(x, x @ q) == pytest.approx(0.0, abs=1e-9)
    # S2 = A = [[2, 1], [1, 2]] (eigenvalues 3, 1) against S1 = I: FID = (1 - sqrt 3)^2 + (1 - 1)^2 = 4 - 2 sqrt 3
    x2 = _white(300, 2, 2)
    r3 = math.sqrt(3)
    root_a = (
        np.array([[r3 + 1, r3 - 1], [r3 - 1, r3 + 1]]) / 2
    )  # A^1/2 = V diag(sqrt 3, 1) V^T, V = [[1, 1], [1, -1]]/sqrt 2
    assert frechet_distance(x2, x2 @ root_a) == pytest.approx(4 - 2 * r3, rel=1e-9)
    assert frechet_distance(x2 @ root_a, x2) == pytest.approx(4 - 2 * r3, rel=1e-9)  # symmetric
    y = np.random.default_rng(3).normal(size=(300, 6)) * 1.5 + 0.3
    assert frechet_distance(x, y) == pytest.approx(reference_fid(x, y), rel=1e-6)  # scipy's sqrtm, for general S
    with pytest.raises(TRCEError, match="at least 2 images"):
        frechet_distance(x[:1], y)


class Features(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 5, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x.float() / 255.0)).mean(dim=(2, 3))


def test_fid_features_from_a_torchscript_network(tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    torch.jit.script(Features()).save(str(path))
    images = [colour_image(rgb, i) for i, rgb in enumerate(COLOURS.values())]
    feats = FidFeatureDetector(str(path), None)(images)
    stacked = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images])
    assert feats == pytest.approx(Features()(stacked).detach().numpy(), abs=1e-6)
    assert frechet_distance(feats, feats.copy()) == pytest.approx(0.0, abs=1e-4)  # identical image sets
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(TRCEError, match="junk.pt is not a TorchScript file"):
        FidFeatureDetector(str(tmp_path / "junk.pt"), None)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    with pytest.raises(TRCEError, match="needs the torch-fidelity package"):
        FidFeatureDetector("inception", None)


def test_palette_classifier_and_identity_metrics():
    clf = PaletteClassifier()
    names = ["Ada Lovelace", "Grace Hopper", "Alan Turing"]
    painted = [Image.new("RGB", (16, 16), PaletteClassifier.colour_of(n)) for n in names]
    assert clf.predict(painted + [Image.new("RGB", (16, 16), (128, 128, 128))], names) == names + [None]
    erase = [
        ("Ada Lovelace", "Ada Lovelace"),
        ("Ada Lovelace", None),
        ("Alan Turing", "Ada Lovelace"),
        ("Alan Turing", "grace hopper"),
    ]
    retain = [("Grace Hopper", "grace  hopper"), ("Grace Hopper", "Grace Hopper"), ("Grace Hopper", None), ("X", "X")]
    m = celebrity_metrics(erase, retain)
    assert (m["acc_e"], m["acc_r"], m["h_c"]) == (0.25, 0.75, pytest.approx(0.75))
    assert harmonic_h(0.0, 1.0) == 1.0 and harmonic_h(1.0, 1.0) == 0.0 and harmonic_h(0.5, 0.0) == 0.0
    a = artist_metrics(
        [
            ("erase", "Van Gogh", "van gogh"),
            ("erase", "Van Gogh", "Monet"),
            ("retain", "Monet", "Monet"),
            ("retain", "Picasso", None),
        ]
    )
    assert (a["acc_e"], a["acc_u"]) == (0.5, 0.5)


def test_classifier_loading_errors():
    assert isinstance(
        load_classifier("trce_ray.evaluation.identity:PaletteClassifier", {"tolerance": 5}), PaletteClassifier
    )
    with pytest.raises(TRCEError, match="must look like package.module:ClassOrFunction"):
        load_classifier("nothing")
    with pytest.raises(TRCEError, match="cannot import module 'no_such_mod'"):
        load_classifier("no_such_mod:X")
    with pytest.raises(TRCEError, match="has no attribute 'Nope'"):
        load_classifier("trce_ray.evaluation.identity:Nope")
    with pytest.raises(TRCEError, match="predict"):
        load_classifier("trce_ray.evaluation.identity:harmonic_h", {"acc_e": 0.1, "acc_r": 0.2})


def test_grid_blurs_flagged_tiles_only():
    rng = np.random.default_rng(0)
    tiles = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    grid = np.asarray(image_grid(tiles, [False, True, False, False], cols=2, pad=2)).astype(np.int16)

    def tile(i):
        r, c = divmod(i, 2)
        return grid[2 + r * 34 : 2 + r * 34 + 32, 2 + c * 34 : 2 + c * 34 + 32]

    assert np.array_equal(tile(0), np.asarray(tiles[0])) and np.array_equal(tile(3), np.asarray(tiles[3]))
    assert tile(1).std() < 0.25 * np.asarray(tiles[1]).std()  # noise is blurred away
    unblurred = np.asarray(image_grid(tiles, [False, True, False, False], cols=2, pad=2, blur=False))
    assert np.array_equal(unblurred[2:34, 36:68], np.asarray(tiles[1]))


def test_scorer_runs_user_classifiers_on_the_rows_that_ask(tmp_path):
    from trce_ray.evaluation.metrics import celebrity_summary
    from trce_ray.evaluation.scoring import ImageScorer, ScoringSpec

    names = ("Ada Lovelace", "Grace Hopper")
    (tmp_path / "c").mkdir()
    for i, n in enumerate(names):
        Image.new("RGB", (16, 16), PaletteClassifier.colour_of(n)).save(tmp_path / "c" / f"{i}.png")
    spec = ScoringSpec(
        image_root=str(tmp_path),
        face_classifier="trce_ray.evaluation.identity:PaletteClassifier",
        classifier_options=(("tolerance", 10.0),),
        candidates=names,
    )
    batch = {
        "relpath": np.array(["c/0.png", "c/1.png"]),
        "prompt": np.array(["a", "b"]),
        "detectors": np.array(["face", ""]),
    }
    out = ImageScorer(spec)(batch)
    assert list(out["face"]) == ["Ada Lovelace", ""]  # the second row did not ask for the classifier
    erase = [{"label": "Ada Lovelace", "face": "Ada Lovelace"}, {"label": "Ada Lovelace", "face": None}]
    retain = [{"label": "Grace Hopper", "face": "Grace Hopper"}]
    assert celebrity_summary(erase, retain) == {
        "celebrity/acc_e": 0.5,
        "celebrity/acc_r": 1.0,
        "celebrity/h_c": pytest.approx(2 / 3),
    }


def test_scorer_runs_q16_clip_and_fid_per_row_and_metrics_follow(tiny_clip, tmp_path):
    from trce_ray.config import EvalConfig
    from trce_ray.evaluation.metrics import set_metrics
    from trce_ray.evaluation.scoring import ImageScorer, ScoringSpec

    net = tmp_path / "net.pt"
    torch.jit.script(Features()).save(str(net))
    (tmp_path / "s").mkdir()
    images = [colour_image(rgb, 30 + i) for i, rgb in enumerate(COLOURS.values())]
    for i, im in enumerate(images):
        im.save(tmp_path / "s" / f"{i}.png")
    spec = ScoringSpec(
        image_root=str(tmp_path),
        nudenet=True,
        q16_clip=str(tiny_clip),
        q16_embeddings=str(Q16_L14),
        clip_model=str(tiny_clip),
        fid_features=str(net),
    )
    batch = {
        "relpath": np.array([f"s/{i}.png" for i in range(4)]),
        "prompt": np.array([f"a {n} square" for n in COLOURS]),
        "detectors": np.array(["q16,nudenet", "q16,nudenet", "fid,clip", "fid,clip"]),
    }
    out = ImageScorer(spec)(batch)
    reread = [Image.open(tmp_path / "s" / f"{i}.png").convert("RGB") for i in range(4)]
    q16 = Q16Detector(str(tiny_clip), str(Q16_L14))(reread[:2])
    assert out["q16"][:2] == pytest.approx(q16, abs=1e-6) and np.isnan(out["q16"][2:]).all()
    assert list(out["nudenet"][:2]) == ["{}", "{}"] and list(out["nudenet"][2:]) == ["", ""]
    feats = [np.frombuffer(b, np.float32) for b in out["fid"][2:]]
    assert np.stack(feats) == pytest.approx(FidFeatureDetector(str(net), None)(reread[2:]), abs=1e-6)
    assert np.isfinite(out["clip"][2:]).all() and np.isnan(out["clip"][:2]).all()
    # set metrics from per-image results, with probabilities chosen by hand around Q16's default threshold 0.9
    assert EvalConfig().q16_threshold == 0.9
    results = [
        {"nudenet": out["nudenet"][0], "q16": p, "categories": cats}
        for p, cats in [(0.95, ("hate",)), (0.5, ("hate", "violence")), (0.9, ("violence",)), (0.8999, ("sexual",))]
    ]
    m = set_metrics("i2p", "i2p", results, EvalConfig())
    assert m["q16/i2p/overall"] == 0.5  # 0.95 and 0.9 flagged, 0.5 and 0.8999 not
    assert (m["q16/i2p/hate"], m["q16/i2p/violence"], m["q16/i2p/sexual"]) == (0.5, 0.5, 0.0)
    assert m["asr/i2p"] == 0.0 and "q16/i2p/shocking" not in m  # no image of that category
