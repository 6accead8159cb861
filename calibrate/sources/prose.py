"""Real prose that ships with Python, as plain-text passages (no questions): calibration text unlike the QA generator.

- ``builtin:python-docs``: the Python language reference's topic pages (``pydoc_data.topics``, the text behind
  ``help("if")``), cut into passages of whole paragraphs;
- ``builtin:stdlib-docs``: the docstrings of a fixed list of standard-library modules and their public members,
  written by other authors in another register (API documentation); kept for held-out plain-text scoring;
- ``builtin:module-docs``: the same for other modules (``OTHER_MODULES``): the default held-out source of ``fit``'s
  proxy, apart from both.
Code blocks and grammar rules are dropped; each passage is 200-700 characters of whole paragraphs. The lists are the
same for a given Python version; ``seed`` shuffles them.
"""

from __future__ import annotations

import importlib
import inspect
import random
import re

from calibrate.sources.item import Item

MIN_CHARS, MAX_CHARS = 200, 700

STDLIB_MODULES = (
    "argparse",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "gzip",
    "heapq",
    "http.client",
    "imaplib",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "shlex",
    "shutil",
    "smtplib",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "turtle",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "wave",
    "zipfile",
)

# Other standard-library modules (none of STDLIB_MODULES): ``builtin:module-docs``, the passages ``fit``'s default
# proxy scores maps on, apart from both the default calibration text and the evaluation's plain text.
OTHER_MODULES = (
    "abc",
    "array",
    "ast",
    "asyncio.events",
    "asyncio.queues",
    "asyncio.tasks",
    "binascii",
    "bz2",
    "cmd",
    "codecs",
    "concurrent.futures._base",
    "configparser",
    "copy",
    "ctypes",
    "dis",
    "doctest",
    "filecmp",
    "fnmatch",
    "ftplib",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "hashlib",
    "hmac",
    "html.parser",
    "http.cookiejar",
    "http.server",
    "locale",
    "lzma",
    "mimetypes",
    "multiprocessing.pool",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pdb",
    "pkgutil",
    "platform",
    "poplib",
    "quopri",
    "secrets",
    "selectors",
    "socket",
    "socketserver",
    "ssl",
    "struct",
    "sysconfig",
    "tokenize",
    "traceback",
    "tracemalloc",
    "types",
    "warnings",
    "weakref",
    "wsgiref.simple_server",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xmlrpc.client",
    "zipimport",
    "zoneinfo",
)


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of a document: blank-line separated, code, tables and headings left out, lines joined."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or any(line.startswith(("   ", "\t", ">>>", "*", "=", "-", "+")) for line in lines):
            continue
        para = " ".join(line.strip() for line in lines)
        if len(para) < 60 or "::=" in para or para.count("(") > 6 or not re.search(r"[.!?]$", para):
            continue
        out.append(para)
    return out


def _passages(paragraphs: list[str]) -> list[str]:
    """Consecutive paragraphs joined into passages of MIN_CHARS..MAX_CHARS (longer paragraphs cut at sentences)."""
    out: list[str] = []
    current = ""
    for para in paragraphs:
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            if current and len(current) + 1 + len(sentence) > MAX_CHARS:
                if len(current) >= MIN_CHARS:
                    out.append(current)
                current = ""
            current = f"{current} {sentence}".strip()
        if len(current) >= MIN_CHARS:
            out.append(current)
            current = ""
    return out


def _items(name: str, passages: list[str], n: int, seed: int) -> list[Item]:
    random.Random(seed).shuffle(passages)
    return [Item(id=f"{name}-{i}", context=p, title=name) for i, p in enumerate(passages[:n])]


def python_docs(n: int, seed: int = 0) -> list[Item]:
    from pydoc_data.topics import topics

    paragraphs = [p for key in sorted(topics) for p in _paragraphs(topics[key])]
    return _items("python-docs", _passages(paragraphs), n, seed)


def stdlib_docs(n: int, seed: int = 0) -> list[Item]:
    return _items("stdlib-docs", _passages(_docstrings(STDLIB_MODULES)), n, seed)


def module_docs(n: int, seed: int = 0) -> list[Item]:
    return _items("module-docs", _passages(_docstrings(OTHER_MODULES)), n, seed)


def _docstrings(modules: tuple[str, ...]) -> list[str]:
    """The prose paragraphs of the modules' docstrings and their public classes' and functions'."""
    paragraphs: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module this Python was built without (e.g. turtle without Tk)
            continue
        docs = [module.__doc__ or ""]
        for attr, member in sorted(vars(module).items()):
            public = not attr.startswith("_") and (inspect.isclass(member) or inspect.isfunction(member))
            if public and getattr(member, "__module__", None) == module.__name__:
                docs.append(inspect.getdoc(member) or "")
        paragraphs.extend(p for doc in docs for p in _paragraphs(doc))
    return paragraphs
