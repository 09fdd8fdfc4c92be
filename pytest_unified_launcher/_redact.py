"""Masking secrets in what we print: values of secret-looking keys and passwords in URLs."""

from __future__ import annotations

import re
from collections.abc import Mapping

#: A name that holds a secret: "KEY" only as a word of the name (API_KEY, KEY, APIKEY), so that
#: English in our own messages ("valid keys: command, ...") and names like MONKEY stay readable.
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|APIKEY|(?:^|_)KEY(?:$|_)", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
ASSIGNMENT = re.compile(r"(?P<key>\b[A-Za-z_][A-Za-z0-9_]*)(?P<sep>\s*[=:]\s*)(?P<quote>['\"]?)(?P<value>[^\s'\",;]+)")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with URL passwords and the values of secret-looking ``KEY=value`` pairs masked."""
    text = URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)

    def assignment(m: re.Match[str]) -> str:
        if SECRET_KEY.search(m["key"]) and m["value"] != MASK:
            return f"{m['key']}{m['sep']}{m['quote']}{MASK}"
        return m.group(0)

    return ASSIGNMENT.sub(assignment, text)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` fit for printing."""
    return {k: MASK if SECRET_KEY.search(k) else redact(v) for k, v in env.items()}
