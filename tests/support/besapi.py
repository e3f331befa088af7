"""
The vendor's schema of BESAPI documents (``BESAPI.xsd`` 11.0.4.60, beside this file: where it comes
from and the one spot mended are in its header), loaded once: ``problems(document)`` lists why a
document is not one the REST API sends or takes (empty when it is).

One part of the schema cannot describe what real servers answer, and is not held against a reply:
a query's ``<Result>`` (type ``RelevanceResult``, ``sequence(Answer, Tuple)*``) would need each
``Answer`` followed by a ``Tuple``, while the vendor's own examples (developer.bigfix.com
``rest-api/api/query``, docs/bigfix-facts.md) answer a plain list of ``Answer``s, or of ``Tuple``s of
``Answer``s. A ``Result`` is checked for that instead (``Answer``s with a ``type`` the schema names,
``Tuple``s of them); everything else of a ``Query`` (its ``Evaluation`` or ``Error``) by the schema.
"""

import functools
import pathlib
import xml.etree.ElementTree as ET

import xmlschema

XSD = pathlib.Path(__file__).resolve().parent / "BESAPI.xsd"
RESULT = "/BESAPI/Query/Result"  # RelevanceResult: see above


@functools.lru_cache(maxsize=1)
def schema():
    return xmlschema.XMLSchema(str(XSD))


def problems(document):
    """Why ``document`` (bytes or text) is no valid ``<BESAPI>`` document: a list of reasons."""
    text = document.decode() if isinstance(document, bytes) else document
    try:
        found = [
            f"{error.reason} (at {error.path})"
            for error in schema().iter_errors(text)
            if not (error.path or "").startswith(RESULT)
        ]
    except xmlschema.XMLResourceError as exc:  # not XML at all
        return [f"not XML: {exc}"]
    for result in ET.fromstring(text).iter("Result"):
        found += _result_problems(result)
    return found


def _result_problems(result):
    """A query's ``Result``, as real servers send it: Answers, or Tuples of Answers, typed."""
    kinds = {"boolean", "integer", "string", "utf8 string", "time", "floating point"}
    found = []
    for item in result:
        answers = list(item) if item.tag == "Tuple" else [item]
        if item.tag not in ("Answer", "Tuple") or (item.tag == "Tuple" and not answers):
            found.append(f"a Result holds Answers or Tuples of Answers, not {item.tag} (at {RESULT})")
        for answer in answers:
            if answer.tag != "Answer" or answer.get("type") not in (None, *kinds) or len(answer):
                found.append(f"a Tuple holds typed Answers, not {answer.tag} {answer.attrib} (at {RESULT})")
    return found
