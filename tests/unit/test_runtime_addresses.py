"""The agent's book of instance addresses: picked round-robin, learnt back, given up."""

from __future__ import annotations

import pytest

from kopflet.agent.runtime.addresses import FOREIGN_SECONDS, InstanceAddresses, SubnetExhausted
from kopflet.api import UID

pytestmark = pytest.mark.unit

A, B, C, D = UID("a"), UID("b"), UID("c"), UID("d")


def test_addresses_skip_the_gateway_and_stay_with_their_instance() -> None:
    book = InstanceAddresses("10.244.1.0/24")
    assert book.address_for(A) == "10.244.1.2"
    assert book.address_for(B) == "10.244.1.3"
    assert book.address_for(A) == "10.244.1.2"


def test_an_address_let_go_is_the_last_to_be_reused() -> None:
    book = InstanceAddresses("10.244.1.0/29")  # .2 to .6 for instances
    assert [book.address_for(u) for u in (A, B)] == ["10.244.1.2", "10.244.1.3"]
    book.release(A)
    assert book.address_for(C) == "10.244.1.4"
    assert book.address_for(D) == "10.244.1.5"
    assert book.address_for(UID("e")) == "10.244.1.6"
    # The round comes back to the start: .2 is free again, .3 is not.
    assert book.address_for(UID("f")) == "10.244.1.2"
    with pytest.raises(SubnetExhausted):
        book.address_for(UID("g"))


def test_learnt_addresses_are_never_picked_for_another_instance() -> None:
    book = InstanceAddresses("10.244.1.0/24")
    book.observe(A, "10.244.1.2")
    book.observe(B, "10.244.1.3")
    book.observe(C, "10.244.1.3")  # held by b already: not c's
    book.observe(D, "10.9.9.9")  # not of this subnet
    assert book.get(C) is None and book.get(D) is None
    assert book.address_for(C) == "10.244.1.4"
    assert book.uids() == {A, B, C}


def test_an_address_the_engine_refuses_twice_is_given_up_for_a_while() -> None:
    now = [1000.0]
    book = InstanceAddresses("10.244.1.0/24", clock=lambda: now[0])
    ip = book.address_for(A)
    assert book.refused(A, ip) is False  # maybe let go of late: asked again
    assert book.get(A) == ip
    assert book.refused(A, ip) is True
    assert book.get(A) is None
    book.observe(A, ip)  # an older container of a's still carries it in its label
    assert book.get(A) is None
    assert book.address_for(A) == "10.244.1.3"
    book.release(A)
    for uid in (B, C, D):
        assert book.address_for(uid) != ip
    # After a while it is tried again.
    now[0] += FOREIGN_SECONDS
    book.observe(UID("e"), ip)
    assert book.get(UID("e")) == ip


def test_an_address_given_between_two_refusals_starts_the_count_again() -> None:
    book = InstanceAddresses("10.244.1.0/24")
    ip = book.address_for(A)
    assert book.refused(A, ip) is False
    book.accepted(A)
    assert book.refused(A, ip) is False
    assert book.get(A) == ip
