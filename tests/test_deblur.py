import json
from pathlib import Path, PurePath

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app
from lista_cli.restoration.blur import Blur, PSFError, parse_psf
from lista_cli.restoration.dct import dct2, idct2
from lista_cli.restoration.deblur import LAPLACIAN, estimate_noise, tikhonov

SPECS = ["gaussian:1.5", "box:5", "motion:7,30", "kernel:0.05,0.24,0.40,0.24,0.05"]


def _matrix(operator, shape):
    n = int(np.prod(shape))
    return np.stack([operator(e.reshape(shape)).ravel() for e in np.eye(n)], axis=1)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("boundary", ["periodic", "reflect"])
def test_adjointness(spec, boundary):
    blur = Blur(parse_psf(spec), boundary)
    assert blur.adjointness_test((24, 19), seed=1) < 1e-12
    assert blur.adjointness_test((13, 30, 3), seed=2) < 1e-12


def test_psf_parsing():
    for spec in SPECS:
        psf = parse_psf(spec)
        assert psf.shape[0] % 2 == 1 and psf.shape[1] % 2 == 1
        assert psf.sum() == pytest.approx(1.0)
    assert parse_psf("box:3").shape == (3, 3)
    for bad in ["gaussian:-1", "box:0", "motion:5", "kernel:a,b", "blob:3", "nofile.png"]:
        with pytest.raises(PSFError, match="--psf"):
            parse_psf(bad)


def test_psf_image_file(tmp_path):
    kernel = np.zeros((5, 5), np.uint8)
    kernel[2, 1:4] = 255
    Image.fromarray(kernel).save(tmp_path / "psf.png")
    psf = parse_psf(str(tmp_path / "psf.png"))
    assert psf.sum() == pytest.approx(1.0) and np.count_nonzero(psf) == 3


def test_dct_is_orthonormal_and_inverts(rng):
    x = rng.standard_normal((24, 19))
    np.testing.assert_allclose(idct2(dct2(x)), x, atol=1e-12)
    assert np.sum(dct2(x) ** 2) == pytest.approx(np.sum(x**2))


@pytest.mark.parametrize("spec", ["gaussian:1.5", "box:5", "kernel:0.05,0.24,0.40,0.24,0.05", "motion:7,30"])
@pytest.mark.parametrize("boundary", ["periodic", "reflect"])
@pytest.mark.parametrize("reg", ["identity", "laplacian"])
def test_closed_form_equals_dense_solve(rng, spec, boundary, reg):
    if boundary == "reflect" and spec.startswith("motion"):
        pytest.skip("asymmetric PSF with reflective boundary uses padding + FFT, an approximation")
    shape, alpha = (24, 19), 0.02
    blur = Blur(parse_psf(spec), boundary)
    x = rng.random(shape)
    y = blur.A(x) + 0.01 * rng.standard_normal(shape)
    a = _matrix(blur.A, shape)
    d = np.eye(a.shape[0]) if reg == "identity" else _matrix(Blur(LAPLACIAN, boundary).A, shape)
    expected = np.linalg.solve(a.T @ a + alpha * d.T @ d, a.T @ y.ravel()).reshape(shape)
    result = tikhonov(y, blur, alpha, reg)
    assert result.method == ("fft" if boundary == "periodic" else "dct")
    np.testing.assert_allclose(result.image, expected, atol=1e-6, rtol=0)


def test_colour_channel_by_channel(rng):
    blur = Blur(parse_psf("gaussian:1"), "reflect")
    y = blur.A(rng.random((20, 23, 3)))
    joint = tikhonov(y, blur, 0.01).image
    for c in range(3):
        np.testing.assert_allclose(joint[..., c], tikhonov(y[..., c], blur, 0.01).image, atol=1e-12)


def test_noise_estimate_and_auto_alpha(rng):
    ys, xs = np.mgrid[0:96, 0:96]
    sharp = 0.5 + 0.3 * np.sin(xs / 5.0) * np.cos(ys / 7.0)
    blur = Blur(parse_psf("gaussian:2"), "reflect")
    noisy = blur.A(sharp) + 0.02 * rng.standard_normal(sharp.shape)
    assert estimate_noise(noisy) == pytest.approx(0.02, rel=0.2)
    errors = {}
    for alpha in ("auto", 1e-6, 10.0):
        result = tikhonov(noisy, blur, alpha)
        errors[alpha] = np.mean((result.image - sharp) ** 2)
    assert errors["auto"] < errors[1e-6] and errors["auto"] < errors[10.0]
    gcv = tikhonov(noisy, blur, "auto", rule="gcv")
    assert 1e-6 < gcv.alpha < 10.0


def test_blur_and_deblur_cli(tmp_path, rng):
    sharp_dir = tmp_path / "sharp" / "sub"
    sharp_dir.mkdir(parents=True)
    ys, xs = np.mgrid[0:41, 0:37]
    gray16 = ((0.5 + 0.3 * np.sin(xs / 4.0) * np.cos(ys / 5.0)) * 65535).astype(np.uint16)
    Image.fromarray(gray16).save(sharp_dir / "g.png")
    rgb = (rng.random((41, 37, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(sharp_dir / "c.png")
    runner = CliRunner()
    blurred = tmp_path / "blurred"
    result = runner.invoke(
        app,
        [
            "blur",
            str(tmp_path / "sharp"),
            "--psf",
            "gaussian:1.5",
            "--out",
            str(blurred),
            "--noise-sigma",
            "0.005",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (blurred / "sub" / "g.png").exists()
    out = tmp_path / "restored"
    result = runner.invoke(
        app,
        [
            "deblur",
            str(blurred),
            "--psf",
            "gaussian:1.5",
            "--out",
            str(out),
            "--json",
            "-q",
            "--reference",
            str(tmp_path / "sharp"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {json.loads(line)["image"].split("/")[-1]: json.loads(line) for line in result.stdout.splitlines()}
    assert set(rows) == {"g.png", "c.png"}
    assert rows["g.png"]["psnr"] > rows["g.png"]["psnr_input"]
    assert rows["g.png"]["alpha"] > 0 and 0 < rows["c.png"]["ssim"] <= 1
    restored = Image.open(out / "sub" / "g.png")
    assert restored.mode.startswith("I") and restored.size == (37, 41)  # 16-bit in, 16-bit out
    assert Image.open(out / "sub" / "c.png").mode == "RGB"


def test_deblur_cli_errors(tmp_path):
    runner = CliRunner()
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("no")
    result = runner.invoke(app, ["deblur", str(tmp_path / "a.png"), "--psf", "gauss:2", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "unknown PSF" in result.stderr
    result = runner.invoke(
        app, ["deblur", str(tmp_path / "a.png"), "--psf", "box:3", "--alpha", "x", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "--alpha must be" in result.stderr
    result = runner.invoke(app, ["deblur", str(tmp_path), "--psf", "box:3", "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 3 and "bad.png: not an image file" in result.stderr
    assert (tmp_path / "o" / "a.png").exists()


@pytest.mark.parametrize("spec", ["gaussian:1.5", "box:5", "motion:7,30", "kernel:0.1,0.6,0.3"])
@pytest.mark.parametrize("boundary, mode", [("reflect", "reflect"), ("periodic", "wrap")])
def test_blur_equals_scipy_convolution(spec, boundary, mode):
    """The FFT operator against scipy.ndimage.convolve (half-sample reflection = 'reflect',
    periodic = 'wrap'), an independent direct convolution, on odd sizes and colour."""
    from scipy import ndimage

    psf = parse_psf(spec)
    image = np.random.default_rng(11).random((23, 30, 2))
    got = Blur(psf, boundary).A(image)
    expected = np.stack([ndimage.convolve(image[..., c], psf, mode=mode) for c in range(2)], axis=-1)
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_upre_alpha_is_near_the_oracle_alpha():
    """UPRE (the default rule with the Laplacian) against the oracle: the alpha of least true
    error, found on a dense grid knowing the sharp image."""
    rng = np.random.default_rng(12)
    ys, xs = np.mgrid[0:61, 0:53]
    sharp = 0.5 + 0.2 * np.sin(xs / 4.0) * np.cos(ys / 6.0) + 0.1 * (xs > 30)
    blur = Blur(parse_psf("gaussian:1.5"), "reflect")
    noisy = blur.A(sharp) + 0.01 * rng.standard_normal(sharp.shape)
    grid = 10.0 ** np.linspace(-6, 1, 57)
    errors = [np.mean((tikhonov(noisy, blur, a, reg="laplacian").image - sharp) ** 2) for a in grid]
    oracle = grid[int(np.argmin(errors))]
    chosen = tikhonov(noisy, blur, "auto", reg="laplacian", noise_sigma=0.01)
    assert abs(np.log10(chosen.alpha / oracle)) < 0.5  # within a factor of about 3
    assert np.mean((chosen.image - sharp) ** 2) < 1.2 * min(errors)


def test_binned_alpha_curve_equals_the_per_coefficient_sums():
    """The alpha rules' residual and trace, summed over bins of log(dtd / |a|^2), against the
    exact per-coefficient sums in float64 (zeros of |a| and of dtd included)."""
    from lista_cli.restoration.alpha import _CurveBins

    rng = np.random.default_rng(13)
    power = rng.random(5000) ** 4
    power[:7] = 0.0  # frequencies the blur destroys
    dtd = rng.random(5000) * 8
    dtd[5:12] = 0.0  # the mean: never damped by the Laplacian (5, 6: both zero)
    energy = rng.random(5000)
    curve = _CurveBins(power, dtd).curve(energy, 0.5)
    for alpha in 10.0 ** np.linspace(-8, 3, 23):
        denominator = np.maximum(power + alpha * dtd, 1e-300)
        residual = 0.5 * np.sum((alpha * dtd / denominator) ** 2 * energy)
        trace = np.sum(power / denominator)
        assert curve.residual(alpha) == pytest.approx(residual, rel=2e-3)
        assert curve.trace(alpha) == pytest.approx(trace, rel=2e-3)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (5, 8), (17, 31), (64, 45)])
def test_dct_equals_scipy_orthonormal_dct(shape):
    from scipy.fft import dctn, idctn

    x = np.random.default_rng(shape[0]).standard_normal(shape)
    np.testing.assert_allclose(dct2(x), dctn(x, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(idct2(x), idctn(x, norm="ortho"), atol=1e-12)


def test_a_reused_deconvolver_equals_a_fresh_solve_per_image(rng):
    """The cached diagonalisation (per image size) gives what a fresh solve gives, for
    sizes that alternate, both boundary rules and every alpha rule."""
    from lista_cli.restoration.deblur import Deconvolver

    for spec, boundary, reg, rule in (
        ("gaussian:1.5", "reflect", "laplacian", None),
        ("motion:5,30", "reflect", "identity", "gcv"),
        ("box:3", "periodic", "identity", "discrepancy"),
    ):
        blur = Blur(parse_psf(spec), boundary)
        deconvolve = Deconvolver(blur, "auto", reg, rule=rule)
        for shape in ((33, 40), (17, 29, 3), (33, 40), (64, 45)):
            image = rng.random(shape)
            again, fresh = deconvolve(image), tikhonov(image, blur, "auto", reg, rule=rule)
            assert again.alpha == fresh.alpha
            np.testing.assert_array_equal(again.image, fresh.image)


def test_deblur_batch_reports_in_input_order_with_a_bad_image_between(tmp_path, rng):
    """Reading ahead and writing behind (one I/O thread) keeps results and failures in the
    order of the inputs, and a bad image still leaves every other output written."""
    from lista_cli.io.inputs import InputImage
    from lista_cli.restoration.restore import deblur_images

    folder = tmp_path / "in"
    folder.mkdir()
    names = [f"{i:02d}" for i in range(7)]
    for name in names:
        if name in ("03", "06"):
            (folder / f"{name}.png").write_bytes(b"not a png")
        else:
            Image.fromarray((rng.random((20, 23)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    events = []
    items = [InputImage(folder / f"{name}.png", PurePath(name)) for name in names]
    summary = deblur_images(
        items,
        tmp_path / "out",
        Blur(parse_psf("gaussian:1"), "reflect"),
        on_result=lambda row: events.append(("ok", Path(row["image"]).stem)),
        on_failure=lambda path, message: events.append(("bad", Path(path).stem)),
        on_progress=lambda n: events.append(("progress", n)),
    )
    reported = [(kind, name) for kind, name in events if kind != "progress"]
    assert reported == [("bad" if n in ("03", "06") else "ok", n) for n in names]
    assert sum(n for kind, n in events if kind == "progress") == 7
    assert summary.processed == 5 and [Path(p).stem for p, _ in summary.failures] == ["03", "06"]
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == ["00", "01", "02", "04", "05"]
