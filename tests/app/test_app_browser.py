"""The app in a real browser: Debian's chromium driven by playwright (no playwright download).

Starts ``tools/app.py`` on a free loopback port with tiny fit settings, uploads the astronaut
photo, waits for the 3D viewer and the images, checks the GLB the page fetched and that the
images decoded, tries path-traversal requests, takes screenshots, stops the app.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is not installed (apt-get install -y chromium; make test does it "
                                       "where apt is available)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url):
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture()
def app(tmp_path, digits_runs):
    port = _free_port()
    work = tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "app.py"), "--port", str(port),
                             "--fit-iters", "4", "2", "--fit-size", "32", "--workdir", str(work),
                             "--runs", digits_runs],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                if _status(url + "/") == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, open(tmp_path / "app.log").read()
        yield url, work, tmp_path / "app.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert proc.returncode is not None


def test_reconstruct_in_the_browser(app, tmp_path):
    from playwright.sync_api import sync_playwright
    from skimage.data import astronaut

    from ppface3d.apps.export import save_png

    url, work, log = app
    photo = save_png(str(tmp_path / "astronaut.png"), astronaut())
    # nothing outside the app's own folders is served
    (tmp_path / "secret.txt").write_text("secret")
    for path in ("/etc/passwd", "../../etc/passwd", str(tmp_path / "secret.txt"), f"{work}/sessions/../../secret.txt",
                 os.path.join(ROOT, "setup.py")):
        for route in ("/gradio_api/file=", "/file="):
            assert _status(url + route + path) in (403, 404), route + path
    glbs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                                          "--disable-background-networking", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})

        def on_response(r):
            if r.url.split("?")[0].endswith(".glb") and r.status == 200:
                glbs.append(r.body())

        page.on("response", on_response)
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#rec-files input[type=file]", state="attached", timeout=60_000)
        page.set_input_files("#rec-files input[type=file]", photo)
        page.wait_for_timeout(500)
        page.click("#rec-run")
        page.wait_for_function("document.querySelector('#rec-status textarea') && "
                               "document.querySelector('#rec-status textarea').value.includes('reconstructed')",
                               timeout=120_000)
        page.wait_for_selector("#rec-model3d canvas", timeout=30_000)
        page.wait_for_selector("#rec-gallery img", timeout=30_000)
        page.wait_for_function("[...document.querySelectorAll('#rec-gallery img')].length >= 4 && "
                               "[...document.querySelectorAll('#rec-gallery img')].every(i => i.complete && "
                               "i.naturalWidth > 0)", timeout=30_000)
        for _ in range(40):
            if glbs:
                break
            page.wait_for_timeout(250)
        page.screenshot(path=str(tmp_path / "reconstruct.png"), full_page=True)
        status = page.input_value("#rec-status textarea")
        # a bad upload: the CLI's one-line message in the page, and the app keeps serving
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        page.set_input_files("#rec-files input[type=file]", str(bad))
        page.wait_for_timeout(500)
        page.click("#rec-run")
        page.wait_for_function("document.querySelector('#rec-status textarea').value.includes('notes.png:')",
                               timeout=60_000)
        bad_status = page.input_value("#rec-status textarea")
        page.screenshot(path=str(tmp_path / "bad_upload.png"), full_page=True)
        # Generate: digits from the trained run
        page.get_by_role("tab", name="Generate 生成").click()
        page.fill("#gen-classes textarea", "3 5")
        page.click("#gen-run-button")
        page.wait_for_function("document.querySelector('#gen-status textarea') && "
                               "document.querySelector('#gen-status textarea').value.includes('samples')",
                               timeout=120_000)
        page.wait_for_function("(() => { const i = document.querySelector('#gen-grid img'); "
                               "return i && i.complete && i.naturalWidth > 0; })()", timeout=30_000)
        gen_status = page.input_value("#gen-status textarea")
        page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
        browser.close()
    assert status == "astronaut.png: face 0 reconstructed"
    # (the file list keeps the astronaut: it is reconstructed again, the bad file gets its line)
    assert bad_status.splitlines()[-1].startswith("notes.png: 0 face(s); not an image file")
    assert gen_status == "8 samples"  # 2 classes x 4 samples
    assert glbs and len(glbs[0]) > 1000 and glbs[0][:4] == b"glTF"
    assert os.path.getsize(tmp_path / "reconstruct.png") > 10_000
    assert _status(url + "/") == 200
    # the app's console is quiet too: its start line and the fitter's progress bars only
    import re

    lines = [ln for ln in re.split(r"[\r\n]", open(log).read()) if ln.strip()]
    foreign = [ln for ln in lines if not (ln.startswith("app: http://127.0.0.1:") or ln.startswith("fit:"))]
    assert not foreign, foreign
