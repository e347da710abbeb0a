"""Throughput features: creates for one mailbox share a request, each item keeps
its own outcome, and two daemons on one database share the work exactly once."""
from conftest import Daemon
from pgcluster import wait_for

PROPERTY_KEY = "6f1c3e2a-8b4d-4f5e-9a7c-2d3b1e0f4a86/FollowupdContactLog"


def test_creates_for_one_mailbox_share_requests(db, sim, daemon_factory):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    bob = db.employee("bob", "Bob Baker", "bob@example.org")
    d = daemon_factory(start=False)
    ids = [db.log(alice if n % 2 else bob, reason=f"batched {n}") for n in range(60)]
    d.start()
    db.wait_synced(*ids)
    creates = [r for r in sim.requests() if r["op"] == "CreateItem"]
    assert all(r["valid"] for r in creates)
    # Unbatched, 60 items take 60 requests; how many share one depends on timing.
    assert len(creates) <= 40, f"{len(creates)} CreateItem requests for 60 items: not batched"
    assert all(r["mailbox"] in ("alice@example.org", "bob@example.org") for r in creates)
    for mailbox, logs in (("alice@example.org", ids[1::2]), ("bob@example.org", ids[0::2])):
        tags = sorted(i["extended_properties"][PROPERTY_KEY] for i in sim.mailbox(mailbox))
        assert tags == sorted(f"contactlog:{i}:appointment" for i in logs)


def test_one_bad_item_does_not_fail_its_batch_mates(db, sim, daemon_factory):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    sim.call("POST", "/_sim/reject-subjects", {"contains": "POISON", "code": "ErrorQuotaExceeded"})
    d = daemon_factory(start=False)
    good = [db.log(alice, reason=f"fine {n}") for n in range(10)]
    bad = db.log(alice, reason="POISON pill")
    d.start()
    db.wait_synced(*good, bad)
    batched = [r for r in sim.requests() if r["op"] == "CreateItem"]
    assert len(batched) < 11
    assert len(sim.mailbox("alice@example.org")) == 10
    failed, error = db.query("SELECT failed, last_error FROM contactlog.followupd_log_state "
                             "WHERE contact_log_id = %s", bad)[0]
    assert failed and "ErrorQuotaExceeded" in error
    assert db.value("SELECT count(*) FROM contactlog.followupd_log_state WHERE failed") == 1


def test_two_daemons_share_one_database_without_double_delivery(db, sim, pg, tmp_path):
    alice = db.employee("alice", "Alice Archer", "alice@example.org")
    sim.fault(mode="delay", ms=10, count=-1)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = Daemon(str(tmp_path / "one"), pg, sim, "[delivery]\nconcurrency = 2\nbatch_size = 2\n")
    second = Daemon(str(tmp_path / "two"), pg, sim, "[delivery]\nconcurrency = 2\nbatch_size = 2\n")
    try:
        first.start()
        second.start()
        ids = [db.log(alice, reason=f"shared {n}") for n in range(200)]
        db.wait_synced(*ids, timeout=60)
        sim.call("DELETE", "/_sim/faults")
        tags = [i["extended_properties"][PROPERTY_KEY] for i in sim.mailbox("alice@example.org")]
        assert len(tags) == 200 and len(set(tags)) == 200
        # Both did part of the work.
        assert "created in" in first.output() and "created in" in second.output()
    finally:
        codes = [first.stop(), second.stop()]
        first.notify.close()
        second.notify.close()
    assert codes == [0, 0]
