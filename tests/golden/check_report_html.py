#!/usr/bin/env python3
"""Checks a qvl HTML report (qvl compare/check --html): strictly well-formed (every element closed, in order),
self-contained (no network, no external script, style or image), and naming the expected first divergent module.

  check_report_html.py REPORT.html --first MODULE_PATH|none [--min-svg N]

Exit 0 when every check holds; otherwise one line per problem and exit 1."""
import argparse
import html.parser
import re
import sys

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.problems, self.svgs = [], [], 0
        self.ids, self.capture, self.first_text, self.first_href = {}, 0, "", None
        self.first_rows = []

    def where(self):
        return "line %d, column %d" % self.getpos()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.check_attrs(tag, a)
        if tag == "svg":
            self.svgs += 1
        if tag == "tr" and "first" in (a.get("class") or "").split():
            self.first_rows.append(a.get("id"))
        if "id" in a:
            if a["id"] in self.ids:
                self.problems.append(f"{self.where()}: duplicate id '{a['id']}'")
            self.ids[a["id"]] = tag
        if a.get("id") == "first-divergent":
            self.capture = 1
        elif self.capture:
            self.capture += 1
            if tag == "a" and self.first_href is None:
                self.first_href = a.get("href")
        if tag not in VOID:
            self.stack.append((tag, self.where()))

    def handle_startendtag(self, tag, attrs):
        self.check_attrs(tag, dict(attrs))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack:
            self.problems.append(f"{self.where()}: </{tag}> closes nothing")
            return
        top, at = self.stack.pop()
        if top != tag:
            self.problems.append(f"{self.where()}: </{tag}> closes <{top}> opened at {at}")
        if self.capture:
            self.capture -= 1

    def handle_data(self, data):
        if self.capture:
            self.first_text += data

    def check_attrs(self, tag, a):
        for k in ("src", "href", "xlink:href", "action"):
            v = a.get(k)
            if v is not None and not v.startswith("#"):
                self.problems.append(f"{self.where()}: <{tag} {k}=\"{v}\"> refers outside the file")
        if tag in ("link", "iframe", "object", "embed", "img"):
            self.problems.append(f"{self.where()}: <{tag}> (the report must be self-contained)")
        if tag == "script" and "src" in a:
            self.problems.append(f"{self.where()}: external script")
        if "url(" in (a.get("style") or ""):
            self.problems.append(f"{self.where()}: url() in a style")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--first", required=True, help="the first divergent module path the text report named, or none")
    ap.add_argument("--min-svg", type=int, default=3)
    args = ap.parse_args()
    text = open(args.report, encoding="utf-8").read()
    c = Checker()
    c.feed(text)
    c.close()
    problems = list(c.problems)
    if not text.startswith("<!DOCTYPE html>"):
        problems.append("no <!DOCTYPE html> at the start")
    for tag, at in c.stack:
        problems.append(f"<{tag}> opened at {at} is never closed")
    if re.search(r"https?://(?!www\.w3\.org/2000/svg)", text):
        problems.append("a network address appears in the file")
    if c.svgs < args.min_svg:
        problems.append(f"{c.svgs} inline SVG plots, expected at least {args.min_svg}")
    m = re.search(r"first divergent module:\s*(\S+)", " ".join(c.first_text.split()))
    named = m.group(1) if m else "none"
    if named != args.first:
        problems.append(f"the report names first divergent module '{named}', the text report '{args.first}'")
    if args.first != "none":
        if len(c.first_rows) != 1:
            problems.append(f"{len(c.first_rows)} table rows are highlighted as the first divergence, expected 1")
        elif c.first_href != "#" + str(c.first_rows[0]):
            problems.append(f"the first divergence links to {c.first_href}, its row is #{c.first_rows[0]}")
    for p in problems:
        print(f"{args.report}: {p}")
    if problems:
        return 1
    print(f"{args.report}: well-formed, self-contained, {c.svgs} SVG plots, first divergent module {named}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
