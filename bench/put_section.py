#!/usr/bin/env python3
"""Replaces the section NAME of BENCHMARKS.md (between `<!-- NAME:begin -->` and
`<!-- NAME:end -->`) with a report, or appends the section when it is not there yet.

  bench/put_section.py BENCHMARKS.md gossip "$report"
"""
import sys

path, name, report = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = head + begin + "\n" + report + "\n" + end + tail
else:
    text = text.rstrip() + "\n\n" + begin + "\n" + report + "\n" + end + "\n"
open(path, "w").write(text)
