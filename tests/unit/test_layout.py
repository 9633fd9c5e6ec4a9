"""The layout's rule for bus messages: camstream.wire packs and unpacks them, and nothing else
picks a received multipart message apart by index. Checked on the source with ast."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("camstream", "workers", "benchmarks")
RECEIVERS = {"camstream/wire.py", "camstream/bus.py"}   # bus.drain, bus.receive, the streamer
# pipeline plumbing tested with placeholder headers (b"h1"): the bytes are the test's own
PLACEHOLDER_TESTS = {"test_dispatch.py", "test_routing.py"}


def sources(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if ".venv" not in path.parts and "node_modules" not in path.parts:
                yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def is_receive(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "recv_multipart")


def indexed_receives(tree: ast.AST) -> list[int]:
    """Lines where a received multipart message is indexed: ``sock.recv_multipart()[1]``, or
    ``parts[1]`` of a name bound to one in the same function (or module)."""
    lines = []
    scopes = [tree] + [n for n in ast.walk(tree)
                       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    for scope in scopes:
        received = {target.id for node in ast.walk(scope) if isinstance(node, ast.Assign)
                    and is_receive(node.value) for target in node.targets
                    if isinstance(target, ast.Name)}
        for node in ast.walk(scope):
            if isinstance(node, ast.Subscript) and (
                    is_receive(node.value)
                    or isinstance(node.value, ast.Name) and node.value.id in received):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_only_wire_and_bus_receive_multipart_messages():
    offenders = [f"{name}:{node.lineno}" for name, tree in sources(*PRODUCT)
                 if name not in RECEIVERS for node in ast.walk(tree) if is_receive(node)]
    assert not offenders, ("receive bus messages with camstream.bus.drain/receive and "
                           f"camstream.wire's unpackers: {offenders}")


def test_no_module_indexes_a_received_multipart_message():
    offenders = [f"{name}:{line}" for name, tree in sources(*PRODUCT, "tests")
                 if name != "camstream/wire.py" and Path(name).name not in PLACEHOLDER_TESTS
                 for line in indexed_receives(tree)]
    assert not offenders, f"unpack with camstream.wire instead of by index: {offenders}"


def test_the_check_sees_an_indexed_receive():
    tree = ast.parse("def f(sock):\n    parts = sock.recv_multipart()\n    return parts[1]\n"
                     "g = lambda s: s.recv_multipart(copy=False)[0]\n")
    assert indexed_receives(tree) == [3, 4]


def is_send(node: ast.AST) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("send_multipart", "send_parts")


def mentions_wire(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "wire" for n in ast.walk(node))


def hand_built_sends(tree: ast.AST) -> list[int]:
    """Lines where a multipart message is sent whose parts camstream.wire did not put in
    order: ``sock.send_multipart([topic, header, jpeg])`` rather than ``wire.X(...).pack()``."""
    return sorted(node.lineno for node in ast.walk(tree) if is_send(node)
                  and not any(mentions_wire(arg) for arg in node.args[1 if isinstance(
                      node.func, ast.Name) else 0:]))


def test_only_wire_puts_a_bus_message_together():
    offenders = [f"{name}:{line}" for name, tree in sources(*PRODUCT)
                 if name not in RECEIVERS for line in hand_built_sends(tree)]
    assert not offenders, f"pack bus messages with camstream.wire: {offenders}"


def test_the_check_sees_a_hand_built_send():
    tree = ast.parse("sock.send_multipart([b'raw', header, jpeg])\n"
                     "send_parts(sock, header, jpeg)\n"
                     "sock.send_multipart(wire.Stats('x', {}).pack())\n"
                     "send_parts(sock, wire.Frame.parts(header, jpeg))\n")
    assert hand_built_sends(tree) == [1, 2]
