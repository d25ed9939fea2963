"""A scripted person at a browser, for sign-in and device-approval pages.

It reads pages the way a person would: find the form, type a username and password into it,
click Approve or Deny. Nothing here knows the demo server's field layout beyond what any
login form has (a password input, and buttons that say what they do), so it also drives pages
that are laid out differently. It never prints or logs what it types.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import requests

__all__ = ["UserAgentError", "approve_device", "sign_in"]

_TIMEOUT = 10.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HOPS = 10
_USERNAME_NAMES = ("username", "login", "email", "user")
_INVISIBLE = frozenset({"script", "style", "title", "head"})
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
     "track", "wbr"}
)  # fmt: skip


class UserAgentError(Exception):
    """The page showed an error, or was not what a person could go on with."""

    def __init__(self, message: str, *, status: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.status, self.text = status, text


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: str  # the input's type
    value: str
    autocomplete: str


@dataclass(slots=True)
class _Form:
    action: str
    method: str
    fields: list[_Field] = field(default_factory=list)
    buttons: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, label)

    def has_password(self) -> bool:
        return any(f.kind == "password" for f in self.fields)

    def username_field(self) -> str:
        """The field a person types their username into, as a password manager finds it."""
        for f in self.fields:
            if f.autocomplete == "username":
                return f.name
        for f in self.fields:
            if f.name.lower() in _USERNAME_NAMES and f.kind != "hidden":
                return f.name
        raise UserAgentError("the sign-in form has no username field")


class _PageReader(HTMLParser):
    """Forms, error messages (elements of class "error" or role "alert") and visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.errors: list[str] = []
        self._text: list[str] = []
        self._open: list[tuple[str, bool]] = []  # (tag, whether it holds an error message)
        self._button: tuple[str, str, list[str]] | None = None
        self._error_text: list[str] = []
        self._hidden_depth = 0

    @property
    def text(self) -> str:
        return " ".join(" ".join(self._text).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(_Form(values.get("action", ""), values.get("method", "get")))
        elif tag == "input" and self.forms:
            self._input(values)
        elif tag == "button" and self.forms and values.get("type", "submit") == "submit":
            self._button = (values.get("name", ""), values.get("value", ""), [])
        if tag in _VOID:
            return  # never closed, so never on the stack
        is_error = "error" in values.get("class", "").split() or values.get("role") == "alert"
        self._open.append((tag, is_error))
        if tag in _INVISIBLE:
            self._hidden_depth += 1

    def _input(self, values: dict[str, str]) -> None:
        kind, name = values.get("type", "").lower(), values.get("name", "")
        if kind == "submit":
            self.forms[-1].buttons.append((name, values.get("value", ""), values.get("value", "")))
        elif name:
            entry = _Field(name, kind, values.get("value", ""), values.get("autocomplete", ""))
            self.forms[-1].fields.append(entry)

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None and self.forms:
            name, value, label = self._button
            self.forms[-1].buttons.append((name, value, " ".join("".join(label).split())))
            self._button = None
        if tag not in (opened for opened, _ in self._open):
            return  # a stray or void end tag: nothing to close
        while self._open:
            opened, is_error = self._open.pop()
            if opened in _INVISIBLE:
                self._hidden_depth -= 1
            if is_error and not any(err for _, err in self._open):
                self.errors.append(" ".join("".join(self._error_text).split()))
                self._error_text = []
            if opened == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._hidden_depth:
            return
        self._text.append(data)
        if self._button is not None:
            self._button[2].append(data)
        if any(is_error for _, is_error in self._open):
            self._error_text.append(data)


def _read(response: requests.Response) -> _PageReader:
    reader = _PageReader()
    reader.feed(response.text)
    reader.close()
    return reader


def _session(ca: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # a person's browser here is not configured with our proxy
    session.verify = ca
    return session


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _location(response: requests.Response) -> str | None:
    if response.status_code not in _REDIRECTS or "Location" not in response.headers:
        return None
    return urljoin(response.url, response.headers["Location"])


def _refuse(response: requests.Response, page: _PageReader, doing: str) -> UserAgentError:
    """The exception for a page a person could not go on from."""
    status = response.status_code
    if page.errors:
        reason = "; ".join(page.errors)
    elif status >= 400:
        reason = f"HTTP {status}"
    else:
        reason = "the page has no sign-in form" if doing == "open" else "no redirect came back"
    return UserAgentError(f"{doing}: {reason}", status=status, text=page.text)


def _login_form(response: requests.Response, doing: str) -> _Form:
    page = _read(response)
    forms = [form for form in page.forms if form.has_password()]
    if response.status_code >= 400 or page.errors or not forms:
        raise _refuse(response, page, doing)
    return forms[0]


def _filled(form: _Form, username: str, password: str, approve: bool) -> dict[str, str]:
    """What the browser submits: every field as the page set it, the credentials typed in,
    and the button clicked."""
    data = {f.name: f.value for f in form.fields}
    data[form.username_field()] = username
    for f in form.fields:
        if f.kind == "password":
            data[f.name] = password
    name, value = _button(form, approve)
    if name:
        data[name] = value
    return data


def _button(form: _Form, approve: bool) -> tuple[str, str]:
    wanted = ("approve", "allow", "accept", "yes") if approve else ("deny", "reject", "cancel")
    for name, value, label in form.buttons:
        if any(word in f"{value} {label}".lower() for word in wanted):
            return name, value
    raise UserAgentError(f"the form has no {'approve' if approve else 'deny'} button")


def _submit(
    http: requests.Session, page_url: str, form: _Form, data: dict[str, str], *, follow: bool
) -> requests.Response:
    target = urljoin(page_url, form.action or page_url)
    if form.method.lower() == "post":
        return http.post(target, data=data, allow_redirects=follow, timeout=_TIMEOUT)
    return http.get(target, params=data, allow_redirects=follow, timeout=_TIMEOUT)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def _open(http: requests.Session, url: str) -> tuple[requests.Response, str | None]:
    """GET a page, following redirects within its site as a browser would; stop at one that
    leaves it (to the client's redirect URI) and return that Location too."""
    response = http.get(url, allow_redirects=False, timeout=_TIMEOUT)
    for _ in range(_MAX_HOPS):
        location = _location(response)
        if location is None or _origin(location) != _origin(url):
            return response, location
        response = http.get(location, allow_redirects=False, timeout=_TIMEOUT)
    raise UserAgentError(f"more than {_MAX_HOPS} redirects")


def _deliver(location: str) -> None:
    """Open the redirect as a browser would, where a CLI's one-shot listener waits. Like a
    browser, shrug if nobody listens: the caller has the Location either way."""
    with requests.Session() as plain:
        plain.trust_env = False
        with contextlib.suppress(requests.ConnectionError):
            plain.get(location, allow_redirects=False, timeout=_TIMEOUT)


def sign_in(
    authorization_url: str,
    *,
    username: str,
    password: str,
    approve: bool = True,
    ca: str,
    follow_redirect: bool = True,
) -> str:
    """Open the authorization URL, sign in and approve (or deny); return the redirect's
    Location. A loopback http Location is also opened when `follow_redirect`. A redirect
    straight away (the server refusing the request) is returned, and followed, the same way."""
    with _session(ca) as http:
        opened, location = _open(http, authorization_url)
        if location is None:
            form = _login_form(opened, "open")
            data = _filled(form, username, password, approve)
            submitted = _submit(http, opened.url, form, data, follow=False)
            location = _location(submitted)
            if location is None:
                raise _refuse(submitted, _read(submitted), "sign in")
    if follow_redirect and _is_loopback_http(location):
        _deliver(location)
    return location


def approve_device(
    verification_uri_complete: str,
    *,
    username: str,
    password: str,
    approve: bool = True,
    ca: str,
) -> str:
    """Open the device page (user code prefilled), sign in and approve or deny; return the
    visible text of the result page."""
    with _session(ca) as http:
        opened = http.get(verification_uri_complete, timeout=_TIMEOUT)
        form = _login_form(opened, "open")
        data = _filled(form, username, password, approve)
        submitted = _submit(http, opened.url, form, data, follow=True)
        page = _read(submitted)
        if submitted.status_code >= 400 or page.errors:
            raise _refuse(submitted, page, "answer")
        return page.text
