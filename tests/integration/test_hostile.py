"""Hostile input from both sides (issue 4, "Reliability and security"), end to end:
the real daemon, a real PostgreSQL and the EWS simulator on loopback.

1. A hostile or broken server: malformed and truncated XML, a body over the 4 MiB
   cap, XXE, entity bombs, wrong namespaces, SOAP faults, HTML pages, empty and
   binary bodies, HTTP errors, dropped connections, log-forging text. Each time
   the daemon stays up, logs and records a readable reason, keeps its memory
   bounded, and delivers the log exactly once when the server behaves again.
2. Hostile contact-log text: markup, "]]>", characters XML 1.0 forbids, astral and
   right-to-left text, a megabyte of reason, a 10,000-character name, hostile
   mailboxes and link templates. Every request still validates against
   Microsoft's schema (the simulator checks when FOLLOWUPD_EWS_SCHEMA is set).
3. Secrets: password files readable by others, what -d prints, plain http://.
"""
import base64
import os
import re
import socket
import subprocess
import time

import pytest

import conftest
from conftest import EWS_PASSWORD, EWS_USER, FOLLOWUPD
from pgcluster import wait_for as _wait_for

NS_S = "http://schemas.xmlsoap.org/soap/envelope/"
NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
NS_E = "http://schemas.microsoft.com/exchange/services/2006/errors"
PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"
MAILBOX = "alice@example.org"
FAST = "[delivery]\nbackoff_initial_ms = 20\nbackoff_max_ms = 200\nsettle_ms = 300\n"
DEFAULT_LINK = "https://crm.example.org/contact-logs/{id}"
RSS_LIMIT_KB = 64 * 1024
SCHEMA_CHECKED = bool(os.environ.get("FOLLOWUPD_EWS_SCHEMA"))
# Under FOLLOWUPD_WRAPPER (valgrind) everything is slower and /proc shows the wrapper.
SLOW = getattr(conftest, "SLOW", 1)
WRAPPED = bool(getattr(conftest, "WRAPPER", None))
# An AddressSanitizer build keeps shadow memory and a quarantine of freed blocks:
# its resident size says nothing about followupd's own.
SANITIZED = (os.path.exists(conftest.FOLLOWUPD)
             and b"__asan_init" in open(conftest.FOLLOWUPD, "rb").read())


def wait_for(predicate, timeout=10.0, **kwargs):
    return _wait_for(predicate, timeout=timeout * SLOW, **kwargs)

with open("/etc/passwd", errors="replace") as _f:
    PASSWD_LINES = [line.strip() for line in _f if line.strip()]


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def alice(db):
    return db.employee("alice", "Alice Archer", MAILBOX)


class ErrorHistory:
    """Every last_error the daemon writes. followupd_finish() clears the column once
    the log is delivered, so a trigger keeps the history for the test."""

    def __init__(self, db):
        self.db = db

    def of(self, log_id):
        return [r[0] for r in self.db.query(
            "SELECT last_error FROM public.hostile_error_history WHERE contact_log_id = %s "
            "ORDER BY id", log_id)]


@pytest.fixture
def errors(db):
    db.query("""
        CREATE TABLE IF NOT EXISTS public.hostile_error_history (
            id bigserial PRIMARY KEY, contact_log_id bigint, last_error text, failed boolean);
        TRUNCATE public.hostile_error_history;
        CREATE OR REPLACE FUNCTION public.hostile_keep_error() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- followupd_retry_later() is what counts an attempt and sets the error.
            -- (a throttled log keeps its attempts but records why it waits)
            IF NEW.attempts > OLD.attempts
               OR NEW.failed_version IS NOT NULL AND OLD.failed_version IS NULL
               OR NEW.last_error IS NOT NULL
                  AND NEW.last_error_at IS DISTINCT FROM OLD.last_error_at THEN
                INSERT INTO public.hostile_error_history (contact_log_id, last_error, failed)
                VALUES (NEW.contact_log_id, NEW.last_error, NEW.failed_version IS NOT NULL);
            END IF;
            RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS hostile_keep_error ON contactlog.outlook_queue;
        CREATE TRIGGER hostile_keep_error AFTER UPDATE ON contactlog.outlook_queue
            FOR EACH ROW EXECUTE FUNCTION public.hostile_keep_error();
    """)
    yield ErrorHistory(db)
    db.query("DROP TRIGGER IF EXISTS hostile_keep_error ON contactlog.outlook_queue; "
             "DROP FUNCTION IF EXISTS public.hostile_keep_error(); "
             "DROP TABLE IF EXISTS public.hostile_error_history;")


@pytest.fixture
def fast(daemon_factory):
    return daemon_factory(FAST)


def items_of(sim, log_id, mailbox=MAILBOX):
    prefix = f"contactlog:{log_id}:"
    return [i for i in sim.mailbox(mailbox)
            if i["extended_properties"].get(PROPERTY_KEY, "").startswith(prefix)]


def assert_memory_bounded(daemon):
    """Peak and current resident size of followupd stay under RSS_LIMIT_KB."""
    if WRAPPED or SANITIZED:
        return      # /proc would show valgrind's or ASan's memory, not followupd's
    assert status_kb(daemon.proc, "VmHWM") < RSS_LIMIT_KB
    assert status_kb(daemon.proc, "VmRSS") < RSS_LIMIT_KB


def status_kb(proc, field):
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{proc.pid}/status")


def assert_alive(daemon):
    assert daemon.proc.poll() is None, \
        f"followupd died (status {daemon.proc.returncode}):\n{daemon.output()[-4000:]}"


def assert_clean_output(daemon):
    """Every line is one of ours (a <N> priority prefix: nothing a server or a log
    forged), and no secret is in it."""
    out = daemon.output()
    for line in out.splitlines():
        assert re.match(r"^<[0-7]>", line), f"line without a priority prefix: {line!r}"
    assert EWS_PASSWORD not in out
    assert base64.b64encode(f"{EWS_USER}:{EWS_PASSWORD}".encode()).decode() not in out
    assert "\x1b" not in out
    return out


def sync_row(db, log_id):
    return db.query("SELECT failed, last_error, attempts FROM contactlog.followupd_log_state "
                    "WHERE contact_log_id = %s", log_id)[0]


def envelope(body, header=""):
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<s:Envelope xmlns:s="{NS_S}">'
            f'{header}<s:Body>{body}</s:Body></s:Envelope>')


def create_response(message):
    return envelope(f'<m:CreateItemResponse xmlns:m="{NS_M}" xmlns:t="{NS_T}">'
                    f'<m:ResponseMessages>{message}</m:ResponseMessages></m:CreateItemResponse>')


def error_message(code, text="It went wrong.", klass="Error"):
    return (f'<m:CreateItemResponseMessage ResponseClass="{klass}"><m:MessageText>{text}'
            f'</m:MessageText><m:ResponseCode>{code}</m:ResponseCode><m:DescriptiveLinkKey>0'
            f'</m:DescriptiveLinkKey><m:Items/></m:CreateItemResponseMessage>')


def soap_fault(code, text="An internal server error occurred. Try again later."):
    return envelope(f'<s:Fault><faultcode xmlns:a="{NS_T}">a:{code}</faultcode>'
                    f'<faultstring xml:lang="en-US">{text}</faultstring><detail>'
                    f'<e:ResponseCode xmlns:e="{NS_E}">{code}</e:ResponseCode>'
                    f'<e:Message xmlns:e="{NS_E}">{text}</e:Message></detail></s:Fault>')


# A success that names an item the simulator never made: if the daemon ever adopts
# it (from a truncated or otherwise broken answer) the real item never arrives.
FAKE_SUCCESS = create_response(
    '<m:CreateItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
    '</m:ResponseCode><m:Items><t:CalendarItem><t:ItemId Id="FAKE-ITEM-ID" ChangeKey="FAKE"/>'
    '</t:CalendarItem></m:Items></m:CreateItemResponseMessage>')

HTML_PAGE = ("<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>"
             "<body><h1>The service is unavailable.</h1><br><p>Please log in</p></body></html>")


def raw(body, status=200, content_type="text/xml; charset=utf-8", **extra):
    spec = {"mode": "raw", "status": status, "content_type": content_type}
    if isinstance(body, bytes):
        spec["body_b64"] = base64.b64encode(body).decode()
    else:
        spec["body"] = body
    spec.update(extra)
    return spec


def billion_laughs():
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{n} "{("&lol%d;" % (n - 1)) * 10}">' for n in range(1, 10)]
    return (f'<?xml version="1.0"?>\n<!DOCTYPE s:Envelope [{"".join(entities)}]>\n'
            f'<s:Envelope xmlns:s="{NS_S}"><s:Body><s:Fault><faultcode>s:Server</faultcode>'
            f'<faultstring>&lol9;</faultstring></s:Fault></s:Body></s:Envelope>')


def with_doctype(doctype, document, declaration='<?xml version="1.0" encoding="utf-8"?>'):
    """A document made by envelope() with a DOCTYPE between declaration and root."""
    return f"{declaration}\n{doctype}\n" + document.split("\n", 1)[1]


def quadratic_blowup():
    return with_doctype(f'<!DOCTYPE s:Envelope [<!ENTITY a "{"A" * 50000}">]>',
                        envelope("<s:Fault><faultcode>s:Server</faultcode><faultstring>"
                                 + "&a;" * 20000 + "</faultstring></s:Fault>"))


XXE_FILE = with_doctype('<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
                        create_response(error_message("ErrorInternalServerTransientError",
                                                      "&xxe;")))

XXE_PARAMETER = with_doctype(
    '<!DOCTYPE s:Envelope [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>',
    create_response(error_message("ErrorInternalServerTransientError")))

XXE_UTF16 = with_doctype('<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>',
                         create_response(error_message("ErrorInternalServerTransientError",
                                                       "&xxe;")),
                         '<?xml version="1.0" encoding="UTF-16"?>').encode("utf-16")


def deep_nesting(depth=20000):
    return envelope("<a>" * depth + "</a>" * depth)


# (id, fault spec, how many times, text the reason must contain)
RESPONSE_CASES = [
    ("malformed-xml",
     raw(envelope(f'<m:CreateItemResponse xmlns:m="{NS_M}"><m:ResponseMessages></s:Body>')),
     1, "not XML"),
    ("truncated-to-one-byte", raw(FAKE_SUCCESS[:1]), 1, "not XML"),
    ("truncated-half", raw(FAKE_SUCCESS[:len(FAKE_SUCCESS) // 2]), 1, "not XML"),
    ("truncated-last-byte", raw(FAKE_SUCCESS.rstrip()[:-1]), 1, "not XML"),
    ("trailing-garbage", raw(FAKE_SUCCESS + "<second-root/>"), 1, "not XML"),
    ("larger-than-4-mib",
     raw(create_response(error_message("ErrorServerBusy", "x" * (5 * 1024 * 1024)))),
     2, "larger than"),
    ("xxe-file-entity", raw(XXE_FILE), 1, "DOCTYPE not allowed"),
    ("xxe-parameter-entity", raw(XXE_PARAMETER), 1, "DOCTYPE not allowed"),
    ("xxe-utf16", raw(XXE_UTF16), 1, "DOCTYPE not allowed"),
    ("billion-laughs", raw(billion_laughs()), 1, "DOCTYPE not allowed"),
    ("quadratic-blowup", raw(quadratic_blowup()), 1, "DOCTYPE not allowed"),
    ("wrong-envelope-namespace",
     raw(envelope("<x/>").replace(NS_S, "http://example.org/not-soap")),
     1, "unexpected namespace"),
    ("soap-1.2-envelope",
     raw(envelope("<x/>").replace(NS_S, "http://www.w3.org/2003/05/soap-envelope")),
     1, "SOAP 1.2"),
    ("wrong-operation-namespace",
     raw(FAKE_SUCCESS.replace(f'xmlns:m="{NS_M}"', 'xmlns:m="http://example.org/evil"')),
     1, "unexpected namespace"),
    ("unbound-prefix", raw(envelope("<m:CreateItemResponse/>")), 1, "not XML"),
    ("no-soap-envelope",
     raw(f'<m:CreateItemResponse xmlns:m="{NS_M}"><m:ResponseMessages/></m:CreateItemResponse>'),
     1, "no SOAP Envelope"),
    ("soap-fault-transient-500", raw(soap_fault("ErrorInternalServerTransientError"), 500),
     2, "ErrorInternalServerTransientError"),
    ("soap-fault-transient-200", raw(soap_fault("ErrorInternalServerTransientError")),
     1, "ErrorInternalServerTransientError"),
    ("soap-fault-without-faultcode",
     raw(envelope("<s:Fault><faultstring>no code</faultstring></s:Fault>"), 500),
     1, "without faultcode"),
    ("server-busy-fault", {"mode": "server_busy_fault", "back_off_ms": 50}, 1,
     "ErrorServerBusy"),
    ("server-busy-message", {"mode": "server_busy", "back_off_ms": 50}, 2, "ErrorServerBusy"),
    ("unknown-response-code",
     {"mode": "response_code", "code": "ErrorFromTheFuture", "message": "new in 2031"},
     1, "ErrorFromTheFuture"),
    ("html-page-status-200", raw(HTML_PAGE, content_type="text/html"), 1, "HTML page"),
    ("html-page-with-bom-as-xml", raw(b"\xef\xbb\xbf \r\n" + HTML_PAGE.encode()), 1,
     "HTML page"),
    ("empty-body-status-200", raw(""), 1, "empty response"),
    ("whitespace-body-status-200", raw(" \r\n\t "), 1, "not XML"),
    ("http-500-binary-garbage",
     raw(bytes(range(256)) * 8, 500, "application/octet-stream"), 1, "not XML"),
    ("invalid-utf8", raw(create_response(error_message("ErrorServerBusy", "@@")).encode()
                         .replace(b"@@", b"\xff\xfe\xc3\x28")), 1, "not XML"),
    ("http-404-html",
     {"mode": "http_status", "status": 404, "content_type": "text/html", "body": HTML_PAGE},
     1, "HTTP 404"),
    ("http-502-proxy", {"mode": "http_status", "status": 502, "body": "Bad Gateway"}, 1,
     "HTTP 502"),
    ("connection-dropped", {"mode": "drop_before_perform"}, 1, "cannot reach Exchange"),
    ("success-without-item-id",
     raw(create_response('<m:CreateItemResponseMessage ResponseClass="Success">'
                         '<m:ResponseCode>NoError</m:ResponseCode><m:Items/>'
                         '</m:CreateItemResponseMessage>')), 1, "no item id"),
    ("answer-to-another-operation",
     raw(envelope(f'<m:DeleteItemResponse xmlns:m="{NS_M}"><m:ResponseMessages>'
                  '<m:DeleteItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError'
                  '</m:ResponseCode></m:DeleteItemResponseMessage></m:ResponseMessages>'
                  '</m:DeleteItemResponse>')), 1, "no item id"),
    ("deep-nesting", raw(deep_nesting()), 1, "not XML"),
    ("huge-message-text",
     raw(create_response(error_message("ErrorInternalServerTransientError",
                                       "long " * 600000))), 1,
     "ErrorInternalServerTransientError"),
    ("huge-multibyte-message-text",
     raw(create_response(error_message("ErrorInternalServerTransientError",
                                       "\u00e4\u20ac\U0001F600" * 100001))), 1,
     "ErrorInternalServerTransientError"),
    ("huge-response-code",
     raw(create_response(error_message("\u00e4" * 100001))), 1, "\u00e4\u00e4"),
    ("log-forging-message-text",
     raw(create_response(error_message(
         "ErrorInternalServerTransientError",
         "boom&#10;&lt;0&gt;followupd: FORGED emergency&#13;&#10;&lt;3&gt;FORGED too"))),
     1, "ErrorInternalServerTransientError"),
]


@pytest.mark.parametrize("fault,count,expected",
                         [pytest.param(f, c, e, id=i) for i, f, c, e in RESPONSE_CASES])
def test_hostile_response_is_survived_and_retried(db, sim, fast, alice, errors, fault, count,
                                                  expected):
    sim.fault(**dict(fault, count=count, ops=["CreateItem"]))
    log_id = db.log(alice, contact_name="Grace Hopper", reason="Hostile server test")

    items = wait_for(lambda: items_of(sim, log_id), timeout=20,
                     what="the appointment after the server behaves again")
    db.wait_synced(log_id, timeout=20)
    assert_alive(fast)

    # Delivered exactly once, by the real CreateItem, never from the broken answer.
    assert len(items) == 1
    assert items[0]["subject"] == "Hostile server test"
    creates = [r for r in sim.requests() if r["op"] == "CreateItem"]
    assert [r["fault"] for r in creates].count(None) == 1
    assert len([r for r in creates if r["fault"]]) == count
    assert all(r["valid"] is True for r in sim.requests())
    assert db.query("SELECT item_id FROM contactlog.outlook_item WHERE contact_log_id = %s",
                    log_id) == [(items[0]["id"],)]
    assert sync_row(db, log_id) == (False, None, 0)

    # A reason was recorded for every failure and logged; readable and bounded.
    history = errors.of(log_id)
    assert len(history) == count, history
    for reason in history:
        assert expected in reason, reason
        assert len(reason) < 1100
        assert reason.isprintable(), repr(reason)
    out = assert_clean_output(fast)
    assert expected in out
    assert f"contact log {log_id}" in out
    assert not re.search(r"^<\d>(followupd: )?FORGED", out, re.M)
    for line in PASSWD_LINES:
        assert line not in out
        assert all(line not in reason for reason in history)

    # Memory stays bounded whatever was sent (the cap is 4 MiB, the bombs never expand).
    assert_memory_bounded(fast)


def test_oversized_responses_keep_memory_flat(db, sim, fast, alice, errors):
    """Five answers of 5 MiB each and one of 10 MiB: the transfer is cut at the cap,
    so the peak resident size stays far below what was sent."""
    body = create_response(error_message("ErrorServerBusy", "y" * (5 * 1024 * 1024)))
    sim.fault(**raw(body, count=5, ops=["CreateItem"]))
    sim.fault(**raw(b" " * (10 * 1024 * 1024), count=1, ops=["CreateItem"]))
    log_id = db.log(alice, reason="Big answers")
    wait_for(lambda: items_of(sim, log_id), timeout=30, what="the appointment")
    db.wait_synced(log_id)
    assert_alive(fast)
    assert len(items_of(sim, log_id)) == 1
    assert len(errors.of(log_id)) == 6
    assert all("larger than" in e for e in errors.of(log_id))
    assert_memory_bounded(fast)
    assert_clean_output(fast)


def test_external_dtd_is_never_fetched(db, sim, fast, alice, errors):
    """A DOCTYPE naming an external DTD or entity on a listening port: nothing ever
    connects to it (XML_PARSE_NONET, no DTD loading)."""
    trap = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    url = f"http://127.0.0.1:{trap.getsockname()[1]}/evil.dtd"
    try:
        bodies = [
            f'<?xml version="1.0"?>\n<!DOCTYPE s:Envelope SYSTEM "{url}">\n<s:Envelope '
            f'xmlns:s="{NS_S}"><s:Body/></s:Envelope>',
            f'<?xml version="1.0"?>\n<!DOCTYPE s:Envelope [<!ENTITY % ext SYSTEM "{url}"> %ext;]>'
            f'\n<s:Envelope xmlns:s="{NS_S}"><s:Body/></s:Envelope>',
            with_doctype(f'<!DOCTYPE s:Envelope [<!ENTITY e SYSTEM "{url}">]>',
                         create_response(error_message("ErrorServerBusy", "&e;"))),
        ]
        for body in bodies:
            sim.fault(**raw(body, count=1, ops=["CreateItem"]))
        log_id = db.log(alice, reason="External DTD")
        wait_for(lambda: items_of(sim, log_id), timeout=20, what="the appointment")
        db.wait_synced(log_id)
        time.sleep(0.2)
        with pytest.raises(BlockingIOError):
            trap.accept()
    finally:
        trap.close()
    assert_alive(fast)
    assert [("DOCTYPE not allowed" in e) for e in errors.of(log_id)] == [True] * 3
    assert_clean_output(fast)


def test_retry_after_is_honoured(db, sim, fast, alice, errors):
    sim.fault(mode="http_status", status=503, retry_after=1, count=1, ops=["CreateItem"])
    log_id = db.log(alice, reason="Throttled")
    wait_for(lambda: items_of(sim, log_id), timeout=20, what="the appointment")
    creates = [r for r in sim.requests() if r["op"] == "CreateItem"]
    assert [r["http_status"] for r in creates] == [503, 200]
    # FindItem comes first on the retry (the create's outcome was unknown); the
    # whole pass is still at least Retry-After later.
    retry = [r for r in sim.requests() if r["time"] > creates[0]["time"]][0]
    assert retry["time"] - creates[0]["time"] >= 0.95
    assert "HTTP 503" in errors.of(log_id)[0]
    assert_alive(fast)


# ---------------------------------------------------------------------------
# Hostile contact-log content
# ---------------------------------------------------------------------------

def html_escape(text):
    """The body's escaping contract: the five HTML metacharacters, nothing else."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def xml_clean(text):
    """What item_content promises: characters XML 1.0 forbids become U+FFFD."""
    def ok(ch):
        cp = ord(ch)
        return cp in (0x9, 0xA, 0xD) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD \
            or 0x10000 <= cp <= 0x10FFFF
    return "".join(ch if ok(ch) else "\ufffd" for ch in text)


def utf16_units(text):
    return len(text.encode("utf-16-le")) // 2


def expected_subject(reason, contact_name):
    if not reason.strip(" \t\r\n"):
        subject = "Follow up: " + re.split(r"[\r\n]", contact_name)[0]
    else:
        subject = re.split(r"[\r\n]", reason.lstrip(" \t\r\n"))[0]
    subject = xml_clean(subject)
    out, units = "", 0
    for ch in subject:
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > 255:
            break
        out += ch
    # The simulator stores the text as Exchange would show it: surrounding blanks trimmed.
    return out.strip()


@pytest.fixture
def both(db, daemon_factory):
    """followupd making an appointment and a task per log. Attributes are set before it
    starts, so no pass can read them half-way through the test's setup."""
    db.set_attribute("AddToTasks", "1")
    return daemon_factory(FAST)


def deliver_both(db, sim, alice, **log):
    """Inserts a log (AddToTasks = 1) and returns its appointment and task."""
    assert db.value("SELECT value FROM contactlog.attribute WHERE name = 'AddToTasks'") == "1"
    log_id = db.log(alice, **log)
    found = wait_for(lambda: len(items_of(sim, log_id)) == 2 and items_of(sim, log_id),
                     timeout=20, what=f"appointment and task of log {log_id}")
    db.wait_synced(log_id, timeout=20)
    assert sync_row(db, log_id) == (False, None, 0)
    return log_id, {i["kind"]: i for i in found}


def assert_requests_valid(sim):
    requests = sim.requests()
    assert requests, "no request reached the simulator"
    for r in requests:
        assert r["valid"] is True, f"{r['op']} #{r['seq']} was rejected: {r['error']}"
        if SCHEMA_CHECKED:
            assert r["schema_checked"] is True
    assert sim.call("GET", "/_sim/errors") == []


def link_of(body):
    hrefs = re.findall(r'href="([^"]*)"', body)
    assert len(hrefs) == 1, body[-500:]
    return hrefs[0]


FORBIDDEN = ([chr(c) for c in (0x01, 0x02, 0x07, 0x08, 0x0B, 0x0C, 0x0E, 0x1B, 0x1F)]
             + ["\ufffe", "\uffff"])
ALLOWED_ODDITIES = ["\t", "\x7f", "\x85", "\u2028", "\ufeff", "\ufffd", "\U0010FFFD"]
ALL_CONTROLS = "".join(chr(c) for c in range(1, 32) if c not in (9, 10, 13))

CONTENT_CASES = [
    ("xml-metacharacters", "Bring <b>&amp;</b> \"quotes\" and 'apostrophes' > less",
     "O'Brien & <Sons> \"Ltd\""),
    ("cdata-terminator", "Ends with ]]> and <![CDATA[ starts ]]>", "]]>]]>"),
    ("script-injection", "<script>alert('x')</script><img src=x onerror=alert(1)>",
     "<iframe src=javascript:alert(1)>"),
    ("entity-lookalikes", "&lt; &#x41; &amp;amp; &nbsp; &#0; &xxe;", "&#x1;"),
    ("all-controls-in-reason", f"Ctl{ALL_CONTROLS}end", "Ctl Name"),
    ("all-controls-in-name-empty-reason", "", f"Name{ALL_CONTROLS}x"),
    ("noncharacters", "Non \ufffe\uffff chars \U0001FFFE\U0010FFFF end", "N\uffffN"),
    ("emoji-and-astral", "\U0001F4DE Call back \U0001F600\U0001F389 \U0001D11E \U00020BB7",
     "\U0001F9D1\u200D\U0001F4BB Dev"),
    ("right-to-left", "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202e"
     "txt.exe\u202c done", "\u202e\u05d3\u05d5\u05d3 \u0639\u0644\u064a"),
    ("bidi-controls-and-zero-width", "a\u200b\u200e\u200f\u2066\u2069\u061c b", "z\u200dz"),
    ("combining-marks", "Z\u0351\u0352\u0353\u0354" * 40 + " zalgo", "e\u0301"),
    ("leading-blank-lines", "\n\n   \r\n  Real subject\r\nsecond line", "Name"),
    ("whitespace-only-reason", " \t\r\n ", "Fallback Name"),
    ("one-megabyte-reason", "Lorem ipsum dolor sit amet, " * 37450, "Big Reason"),
    ("one-megabyte-multibyte-reason", "\u00e4\u20ac\u4e2d" * 350000, "Big UTF-8"),
    ("astral-at-subject-boundary", "a" * 254 + "\U0001F600" + "b" * 10, "Boundary"),
    ("bmp-at-subject-boundary", "a" * 254 + "\u20ac\u20ac" + "b" * 10, "Boundary"),
    ("ten-thousand-character-name", "", "N" * 9990 + "\U0001F600" * 10),
    ("long-name-with-reason", "Short reason", "Very Long Name " * 700),
]


@pytest.mark.parametrize("reason,contact_name",
                         [pytest.param(r, n, id=i) for i, r, n in CONTENT_CASES])
def test_hostile_text_is_delivered_clean(db, sim, both, alice, reason, contact_name):
    log_id, items = deliver_both(db, sim, alice, reason=reason, contact_name=contact_name)
    assert_requests_valid(sim)
    assert_alive(both)
    subject = expected_subject(reason, contact_name)
    for kind, item in items.items():
        assert item["subject"] == subject, kind
        assert utf16_units(item["subject"]) <= 255
        assert "\r" not in item["subject"] and "\n" not in item["subject"]
        assert item["body_type"] == "HTML"
        body = item["body"]
        # The body keeps the whole text, cleaned and escaped, and nothing of it is markup.
        assert html_escape(xml_clean(contact_name.split("\n")[0])) in body
        if reason.strip(" \t\r\n"):
            first = max(re.split(r"[\r\n]", reason), key=len)
            assert html_escape(xml_clean(first)) in body
        for dangerous in ("<script", "<iframe", "<img", "<![CDATA["):
            assert dangerous not in body
        assert link_of(body) == DEFAULT_LINK.format(id=log_id)
        assert not any(ch in body for ch in FORBIDDEN)
    assert_clean_output(both)


@pytest.mark.parametrize("ch", [pytest.param(c, id=f"U+{ord(c):04X}") for c in FORBIDDEN])
def test_forbidden_character_arrives_as_replacement(db, sim, both, alice, ch):
    log_id, items = deliver_both(db, sim, alice, reason=f"before{ch}after",
                                 contact_name=f"Name{ch}Name")
    assert_requests_valid(sim)
    for item in items.values():
        assert item["subject"] == "before\ufffdafter"
        assert "Name\ufffdName" in item["body"]
        assert ch not in item["body"]
    assert_alive(both)


@pytest.mark.parametrize("ch", [pytest.param(c, id=f"U+{ord(c):04X}") for c in ALLOWED_ODDITIES])
def test_allowed_odd_character_arrives_unchanged(db, sim, both, alice, ch):
    log_id, items = deliver_both(db, sim, alice, reason=f"before{ch}after",
                                 contact_name=f"Name{ch}Name")
    assert_requests_valid(sim)
    for item in items.values():
        assert item["subject"] == f"before{ch}after"
        assert f"Name{ch}Name" in item["body"]
    assert_alive(both)


HOSTILE_TEMPLATES = [
    ("quotes", 'https://crm.example.org/contact-logs/{id}" onmouseover="alert(1)'),
    ("single-quote", "https://crm.example.org/contact-logs/{id}'><script>x</script>"),
    ("javascript-scheme", "javascript:alert({id})"),
    ("javascript-mixed-case", "JaVaScRiPt:alert('{id}')"),
    ("data-scheme", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=={id}"),
    ("no-id-placeholder", "https://crm.example.org/contact-logs/"),
    ("relative", "/contact-logs/{id}"),
    ("protocol-relative", "//evil.example.org/{id}"),
    ("ftp-scheme", "ftp://crm.example.org/{id}"),
    ("angle-brackets", "https://crm.example.org/{id}<b>"),
    ("embedded-newline", "https://crm.example.org/{id}\nhttps://evil.example.org/"),
    ("embedded-space", "https://crm.example.org/{id} onclick=alert(1)"),
    ("control-character", "https://crm.example.org/\x01{id}"),
    ("empty", ""),
]


@pytest.mark.parametrize("template", [pytest.param(t, id=i) for i, t in HOSTILE_TEMPLATES])
def test_hostile_link_template_falls_back_to_default(db, sim, daemon_factory, alice, template):
    db.set_attribute("LinkUrlTemplate", template)
    db.set_attribute("AddToTasks", "1")
    fast = daemon_factory(FAST)
    log_id, items = deliver_both(db, sim, alice, reason="Link test")
    assert_requests_valid(sim)
    for item in items.values():
        assert link_of(item["body"]) == DEFAULT_LINK.format(id=log_id)
        assert "javascript:" not in item["body"].lower()
        assert "evil.example.org" not in item["body"]
    out = assert_clean_output(fast)
    assert "LinkUrlTemplate" in out     # the problem is reported, not silently ignored
    assert_alive(fast)


def test_valid_link_template_is_used_and_escaped(db, sim, daemon_factory, alice):
    db.set_attribute("LinkUrlTemplate", "HTTP://crm.internal:8080/logs?id={id}&tab=notes#{id}")
    db.set_attribute("AddToTasks", "1")
    daemon_factory(FAST)
    log_id, items = deliver_both(db, sim, alice, reason="Link test")
    assert_requests_valid(sim)
    for item in items.values():
        href = link_of(item["body"])
        assert href == f"HTTP://crm.internal:8080/logs?id={log_id}&amp;tab=notes#{log_id}"
        assert re.match(r"(?i)^https?://", href)


def test_hostile_names_of_assignee_and_forward(db, sim, both, alice):
    bob = db.employee("bob", "<b>Bob</b> & \x01\x1b[31m \U0001F600 ]]>", "bob@example.org")
    carol = db.employee("carol", "\u202eCarol\ufffe" + "C" * 5000, "carol@example.org")
    log_id, items = deliver_both(db, sim, alice, reason="People", assigned_to=bob,
                                 forward_to=carol)
    assert_requests_valid(sim)
    for item in items.values():
        assert html_escape("<b>Bob</b> & \ufffd\ufffd[31m \U0001F600 ]]>") in item["body"]
        assert "\u202eCarol\ufffd" + "C" * 5000 in item["body"]
    # Only the creator's mailbox, whatever the other names look like.
    assert sim.mailbox("bob@example.org") == [] and sim.mailbox("carol@example.org") == []


def test_mailbox_with_xml_metacharacters(db, sim, fast):
    address = "o'brien&sons<x>@example.org"
    creator = db.employee("obrien", "O'Brien", address)
    log_id = db.log(creator, reason="Odd mailbox")
    items = wait_for(lambda: items_of(sim, log_id, mailbox=address), timeout=20,
                     what="the appointment in the odd mailbox")
    assert len(items) == 1
    assert_requests_valid(sim)
    assert all(r["mailbox"] == address for r in sim.requests())
    assert all(r["anchor_mailbox"] == address for r in sim.requests())
    assert_alive(fast)


def test_mailbox_with_line_break_is_refused_not_injected(db, sim, fast, errors):
    """An address with CR/LF would forge an HTTP header (X-AnchorMailbox): the item is
    parked with a reason and nothing is sent."""
    creator = db.employee("crlf", "CR LF", "mallory@example.org\r\nX-Injected: yes")
    log_id = db.log(creator, reason="Header injection")
    wait_for(lambda: sync_row(db, log_id)[0], timeout=20, what="the log to be parked")
    assert sim.requests() == []
    assert errors.of(log_id) and errors.of(log_id)[-1]
    assert_alive(fast)
    out = assert_clean_output(fast)
    assert f"contact log {log_id}" in out
    # Another log still goes through: one bad record never stalls delivery.
    alice = db.employee("alice", "Alice Archer", MAILBOX)
    other = db.log(alice, reason="Still works")
    wait_for(lambda: items_of(sim, other), timeout=20, what="the next log's appointment")


def test_many_hostile_logs_at_once(db, sim, both, alice):
    """All content cases in one batch, concurrently: each arrives once, all valid."""
    ids = [db.log(alice, reason=r, contact_name=n) for _, r, n in CONTENT_CASES]
    wait_for(lambda: len(sim.mailbox(MAILBOX)) == 2 * len(ids), timeout=60,
             what="every appointment and task")
    db.wait_synced(*ids, timeout=30)
    assert_requests_valid(sim)
    for log_id in ids:
        assert sorted(i["kind"] for i in items_of(sim, log_id)) == ["appointment", "task"]
    assert_alive(both)


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

def run_followupd(args, timeout=20, credentials=None):
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM",
                                                            "CREDENTIALS_DIRECTORY")}
    if credentials:
        env["CREDENTIALS_DIRECTORY"] = credentials
    return subprocess.run([FOLLOWUPD] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace", timeout=timeout, env=env)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o777])
def test_password_file_readable_by_others_is_refused(db, daemon_factory, mode):
    d = daemon_factory(FAST, start=False)
    os.chmod(d.password_file, mode)
    result = run_followupd(["-c", d.config_path])
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert d.password_file in text
    assert f"{mode:04o}" in text
    assert "readable by group or others" in text
    assert EWS_PASSWORD not in text
    assert len(result.stderr.strip().splitlines()) <= 3, text


def test_password_symlink_to_readable_file_is_refused(db, daemon_factory, tmp_path):
    d = daemon_factory(FAST, start=False)
    target = tmp_path / "world-readable-secret"
    target.write_text(EWS_PASSWORD + "\n")
    target.chmod(0o644)
    os.unlink(d.password_file)
    os.symlink(target, d.password_file)
    result = run_followupd(["-c", d.config_path])
    assert result.returncode == 1
    assert "0644" in result.stderr and d.password_file in result.stderr
    assert EWS_PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["directory", "empty", "missing"])
def test_unusable_password_file_is_refused(db, daemon_factory, kind):
    d = daemon_factory(FAST, start=False)
    os.unlink(d.password_file)
    if kind == "directory":
        os.mkdir(d.password_file, 0o700)
    elif kind == "empty":
        with open(d.password_file, "w"):
            pass
        os.chmod(d.password_file, 0o600)
    result = run_followupd(["-c", d.config_path])
    assert result.returncode == 1
    assert d.password_file in result.stderr
    assert {"directory": "not a regular file", "empty": "empty",
            "missing": "cannot open"}[kind] in result.stderr


def test_debug_run_never_prints_credentials(db, sim, daemon_factory, alice):
    """A full run with -d: create, update, lookup after a lost answer, delete, a 401,
    a reload. The password and the Authorization header never reach the output."""
    d = daemon_factory(FAST)            # conftest starts followupd with -d
    sim.fault(mode="drop_after_perform", count=1, ops=["CreateItem"])
    log_id = db.log(alice, reason="Secret test")
    wait_for(lambda: items_of(sim, log_id), timeout=20, what="the appointment")
    db.wait_synced(log_id)
    # A refused login parks the log; followupctl retry queues it again.
    sim.fault(mode="http_status", status=401, count=1, ops=["UpdateItem"])
    db.query("UPDATE contactlog.contact_log SET reason = 'Secret test, updated' WHERE id = %s",
             log_id)
    wait_for(lambda: any(r["http_status"] == 401 for r in sim.requests()), timeout=20,
             what="the refused update")
    db.wait_synced(log_id)
    ctl = [conftest.run_ctl(d.config_path, "retry", str(log_id)),
           conftest.run_ctl(d.config_path, "status")]
    wait_for(lambda: any(i["subject"] == "Secret test, updated" for i in items_of(sim, log_id)),
             timeout=20, what="the update")
    d.proc.send_signal(1)    # SIGHUP: reload re-reads the password file
    d.notify.wait_for("RELOADING=1")
    db.query("UPDATE contactlog.contact_log SET next_contact_at = NULL WHERE id = %s", log_id)
    wait_for(lambda: not items_of(sim, log_id), timeout=20, what="the delete")
    db.wait_synced(log_id)
    assert d.stop() == 0

    ops = {r["op"] for r in sim.requests()}
    assert {"CreateItem", "FindItem", "UpdateItem", "DeleteItem"} <= ops
    assert any(r["auth_user"] == EWS_USER for r in sim.requests())
    out = d.output() + "".join(c.stdout + c.stderr for c in ctl)
    assert "<7>" in out, "no debug output: was -d passed?"
    assert "HTTP 401" in out
    token = base64.b64encode(f"{EWS_USER}:{EWS_PASSWORD}".encode()).decode()
    for secret in (EWS_PASSWORD, token, token.rstrip("="), "Authorization:",
                   "authorization: basic"):
        assert secret.lower() not in out.lower(), secret
    for line in d.output().splitlines():
        assert re.match(r"^<[0-7]>", line), line


PLAIN_HTTP_REFUSED = [
    "http://mail.example.org/EWS/Exchange.asmx",
    "http://127.0.0.1.nip.io/EWS/Exchange.asmx",
    "http://localhost.example.org/EWS/Exchange.asmx",
    "http://127.0.0.1@mail.example.org/EWS/Exchange.asmx",
    "http://[::1]@mail.example.org/EWS/Exchange.asmx",
    "http://0x7f000001/EWS/Exchange.asmx",
    "http://10.0.0.1/EWS/Exchange.asmx",
    "http://[::ffff:10.0.0.1]/EWS/Exchange.asmx",
    "HTTP://MAIL.EXAMPLE.ORG/EWS/Exchange.asmx",
]


@pytest.mark.parametrize("url", PLAIN_HTTP_REFUSED)
def test_check_refuses_plain_http_to_remote_host(tmp_path, url):
    conf = tmp_path / "followupd.conf"
    conf.write_text(f"[exchange]\nurl = {url}\nauth = basic\nusername = svc\n")
    result = run_followupd(["--check", "-c", str(conf)])
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "[exchange] url" in message
    assert ("http://" in message and "loopback" in message) or "user name" in message, message
    assert result.stdout == ""


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/EWS/Exchange.asmx",
                                 "http://[::1]/EWS/Exchange.asmx",
                                 "http://localhost/EWS/Exchange.asmx",
                                 "https://mail.example.org/EWS/Exchange.asmx"])
def test_check_accepts_https_and_loopback_http(tmp_path, url):
    conf = tmp_path / "followupd.conf"
    conf.write_text(f"[exchange]\nurl = {url}\nauth = basic\nusername = svc\n")
    # No password_file: --check opens the credential, as under systemd.
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ews-password").write_text("pw\n")
    os.chmod(credentials / "ews-password", 0o400)
    result = run_followupd(["--check", "-c", str(conf)], credentials=str(credentials))
    assert result.returncode == 0, result.stderr
