"""Render the API reference's math in a real browser and count what rendered (issue 17).

    python docs/check_math_render.py [--mathjax /usr/share/javascript/mathjax/MathJax.js] [--png api.png]

Builds the site (`mkdocs build`), points the API page at a local MathJax (the site loads MathJax 3
from a CDN, which a machine without internet cannot reach; Debian's `libjs-mathjax` ships 2.7),
loads it in headless Chromium (Debian's `chromium`) and compares the number of arithmatex spans
with the number of typeset formulas, refusing TeX errors.  `--png` also writes a screenshot of the
first objects with display math, to look at.  Exit status 0 when every formula typeset.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CDN = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("no Chromium found (Debian: apt-get install chromium)")


def _browser(args: list[str], url: str, timeout: int = 300) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           "--virtual-time-budget=200000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mathjax", default="/usr/share/javascript/mathjax/MathJax.js")
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    if not Path(a.mathjax).exists():
        sys.exit(f"no MathJax at {a.mathjax} (Debian: apt-get install libjs-mathjax)")
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-d", str(site)], cwd=root, check=True)
        page = (site / "api" / "index.html").read_text()
        if CDN not in page:
            sys.exit("the API page does not load MathJax from the expected CDN URL; update CDN in this script")
        local = ('<script type="text/x-mathjax-config">MathJax.Hub.Config({tex2jax: {inlineMath: [["\\\\(", "\\\\)"]], '
                 'displayMath: [["\\\\[", "\\\\]"]]}});</script>'
                 f'<script src="file://{Path(a.mathjax).resolve()}?config=TeX-AMS_CHTML"></script>')
        html = site / "api" / "local.html"
        html.write_text(page.replace(CDN, local))
        dom = _browser(["--dump-dom"], html.as_uri())
        spans = dom.count('class="arithmatex"')
        typeset = len(re.findall(r'class="mjx-math', dom))
        errors = len(re.findall(r'<span class="mjx-merror|class="MathJax_Error', dom))
        print(f"arithmatex spans: {spans}, typeset formulas: {typeset}, TeX errors: {errors}")
        if a.png:
            starts = [m.start() for m in re.finditer(r'<div class="arithmatex">', page)][:3]
            parts = [page[page.rfind('<div class="doc doc-object doc-', 0, i):page.find('<div class="doc doc-object doc-', i)]
                     for i in starts]
            small = (page[:page.find("<body")] + '<body><article class="md-content__inner md-typeset">' + "".join(parts)
                     + "</article>" + local + "</body></html>")
            shot = site / "api" / "math.html"
            shot.write_text(small)
            _browser(["--hide-scrollbars", "--window-size=1100,900", f"--screenshot={Path(a.png).resolve()}"],
                     shot.as_uri())
            print(f"screenshot: {a.png}")
        return 0 if spans and typeset == spans and not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
