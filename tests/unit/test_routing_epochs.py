"""Issue 17 item 4, the rule alone (core/routing.py): the Lease's UID is the slice's epoch."""

from __future__ import annotations

from sidecar.core.routing import (
    RETIRED_UIDS_KEPT,
    NothingToDo,
    Publish,
    Refuse,
    SliceState,
    Withdraw,
    publish_action,
    withdraw_action,
)


def state(token: int, address: str = "10.0.0.1", uid: str | None = "u1", retired: tuple[str, ...] = (),
          intact: bool = True) -> SliceState:
    return SliceState(token, (address,) if address else (), "7", uid, retired, intact)


def test_a_token_reset_is_a_new_epoch_and_routes() -> None:
    # The Lease was deleted and created again: its first term has token 1, far below the slice's.
    action = publish_action(state(9), 1, "10.0.0.2", "u2")
    assert action == Publish("10.0.0.2", 1, "7", "u2", ("u1",))


def test_a_retired_uid_is_refused_whatever_its_token() -> None:
    assert isinstance(publish_action(state(1, uid="u2", retired=("u1",)), 99, "10.0.0.1", "u1"), Refuse)
    assert isinstance(withdraw_action(state(1, uid="u2", retired=("u1",)), 9, "10.0.0.1", "u1"), Refuse)


def test_two_elections_on_one_service_do_not_take_turns() -> None:
    after_rename = publish_action(state(5, uid="old"), 1, "10.0.0.2", "new")
    assert isinstance(after_rename, Publish) and after_rename.retired_uids == ("old",)
    stored = state(1, "10.0.0.2", uid="new", retired=after_rename.retired_uids)
    assert isinstance(publish_action(stored, 6, "10.0.0.1", "old"), Refuse)
    assert publish_action(stored, 1, "10.0.0.2", "new") == NothingToDo()


def test_within_an_epoch_tokens_rule_as_before() -> None:
    assert publish_action(state(5), 4, "10.0.0.2", "u1") == Refuse(5)
    assert publish_action(state(5), 6, "10.0.0.2", "u1") == Publish("10.0.0.2", 6, "7", "u1", ())
    assert withdraw_action(state(5), 5, "10.0.0.1", "u1") == Withdraw(5, "7")
    assert withdraw_action(state(5, uid="u2"), 5, "10.0.0.1", "u1") == NothingToDo()  # another epoch's


def test_an_edited_slice_is_repaired_by_its_own_term() -> None:
    assert publish_action(state(5), 5, "10.0.0.1", "u1") == NothingToDo()
    assert publish_action(state(5, intact=False), 5, "10.0.0.1", "u1") == Publish("10.0.0.1", 5, "7", "u1", ())


def test_without_uids_the_rule_is_the_token_alone() -> None:
    legacy = state(5, uid=None)
    assert publish_action(legacy, 4, "10.0.0.2", "u1") == Refuse(5)
    assert publish_action(legacy, 6, "10.0.0.2", "u1") == Publish("10.0.0.2", 6, "7", "u1", ())
    assert publish_action(state(5), 4, "10.0.0.2", None) == Refuse(5)


def test_retired_uids_are_bounded() -> None:
    retired = tuple(f"u{i}" for i in range(100, 100 + RETIRED_UIDS_KEPT))
    action = publish_action(state(1, uid="cur", retired=retired), 1, "10.0.0.2", "next")
    assert isinstance(action, Publish) and len(action.retired_uids) == RETIRED_UIDS_KEPT
    assert action.retired_uids[-1] == "cur"
