"""Acceptor (server) state machine for one key, GS Fig. 8 / Fig. 15.

State per key is the fence watermark plus *every* written non-nil register. A reply therefore
says exactly what the server knows: registers below ``fence`` that are not listed are nil,
registers at or above ``fence`` that are not listed are unwritten (unknown to the reader).
Keeping only the highest register and presenting the lower ones as nil is the trap of the design
note ("unknown, not nil"); the simulator has a planted-bug test for it.

The functions are pure: they return the change to persist and the reply. The runtime must make
the change durable before it sends the reply (never acknowledge before durable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Value = str


@dataclass(slots=True)
class KeyState:
    fence: int = 0
    values: dict[int, Value] = field(default_factory=dict)

    def copy(self) -> KeyState:
        return KeyState(self.fence, dict(self.values))


@dataclass(frozen=True, slots=True)
class Reply:
    """What one server says about one key.

    ``ok`` is False when a write was refused (the register is nil or holds another value); the
    rest of the reply is the server's knowledge either way, so refusals let clients skip ahead.
    """

    ok: bool
    fence: int
    values: dict[int, Value]


@dataclass(frozen=True, slots=True)
class Change:
    """A state change to make durable: a new fence watermark and/or one newly written register."""

    fence: int
    register_set: int | None = None
    value: Value | None = None


def read(state: KeyState, register_set: int, global_fence: int = 0) -> tuple[Change | None, Reply]:
    """P1a: fence every unwritten register below ``register_set`` (set it to nil), reply state.

    Reading with ``register_set`` at or below the current fence changes nothing (a plain peek).
    """
    fence = max(state.fence, global_fence)
    change = None
    if register_set > fence:
        fence = register_set
        change = Change(fence)
    return change, Reply(True, fence, state.values)


def write(
    state: KeyState, register_set: int, value: Value, global_fence: int = 0
) -> tuple[Change | None, Reply]:
    """P2a: write ``value`` to an unwritten register (fencing below it), or refuse.

    A repeated write of the same value is acknowledged again (duplicated messages are harmless).
    """
    fence = max(state.fence, global_fence)
    held = state.values.get(register_set)
    if held is not None:
        return None, Reply(held == value, fence, state.values)
    if register_set < fence:
        return None, Reply(False, fence, state.values)  # the register is nil
    new_fence = max(fence, register_set)
    values = dict(state.values)
    values[register_set] = value
    return Change(new_fence, register_set, value), Reply(True, new_fence, values)


def apply(state: KeyState, change: Change) -> None:
    """Apply a change to the in-memory state (the runtime does this as it persists)."""
    if change.fence > state.fence:
        state.fence = change.fence
    if change.register_set is not None:
        if change.register_set in state.values:
            raise ValueError("write-once violated: register already written")
        state.values = {**state.values, change.register_set: change.value}  # type: ignore[dict-item]
