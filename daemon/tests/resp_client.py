"""Issue 12: the `redis` Python client against chd's RESP socket (run by tests/resp.rs).

Usage: python3 resp_client.py SOCKET
Exits non-zero (an assertion) on any difference from what a Redis user relies on.
"""
import sys

import redis

sock = sys.argv[1]

for protocol in (2, 3):
    r = redis.Redis(unix_socket_path=sock, protocol=protocol)
    p = f"py{protocol}:"
    assert r.ping() is True
    assert r.set(p + "a", b"\x00\xff\r\n") is True
    assert r.get(p + "a") == b"\x00\xff\r\n"
    assert r.get(p + "missing") is None
    assert r.set(p + "a", "x", nx=True) is None
    assert r.set(p + "n", "x", xx=True) is None
    assert r.incr(p + "ctr") == 1
    assert r.incrby(p + "ctr", 41) == 42
    assert r.decr(p + "ctr") == 41
    assert abs(r.incrbyfloat(p + "f", 1.5) - 1.5) < 1e-9
    assert r.append(p + "s", "ab") == 2
    assert r.append(p + "s", "cd") == 4
    assert r.getrange(p + "s", 1, 2) == b"bc"
    assert r.setrange(p + "s", 6, "z") == 7
    assert r.get(p + "s") == b"abcd\x00\x00z"
    assert r.strlen(p + "s") == 7
    assert r.mset({p + "m1": "1", p + "m2": "2"}) is True
    assert r.mget([p + "m1", p + "nope", p + "m2"]) == [b"1", None, b"2"]
    assert r.msetnx({p + "m1": "x", p + "m3": "3"}) is False
    assert r.exists(p + "m1", p + "m2", p + "nope") == 2
    assert r.type(p + "m1") == b"string"
    assert r.ttl(p + "m1") == -1 and r.ttl(p + "nope") == -2
    assert r.getdel(p + "m2") == b"2"
    assert r.delete(p + "m1", p + "nope") == 1
    assert r.client_setname("tester") is True
    assert r.client_getname() in ("tester", b"tester")
    try:
        r.rpush(p + "list", "x")
        raise AssertionError("lists must be refused")
    except redis.ResponseError as e:
        assert "not supported by chd" in str(e), e
    try:
        r.execute_command("GET")
        raise AssertionError("arity must be checked")
    except redis.ResponseError as e:
        assert str(e) == "wrong number of arguments for 'get' command", e

    # A deep pipeline (no MULTI: chd has no transactions); replies come back in order.
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"{p}pipe:{i}", i)
    for i in range(500):
        pipe.incr(p + "pipectr")
    for i in range(500):
        pipe.get(f"{p}pipe:{i}")
    res = pipe.execute()
    assert res[:500] == [True] * 500
    assert res[500:1000] == list(range(1, 501)), res[500:510]
    assert res[1000:] == [str(i).encode() for i in range(500)]

    keys = set(r.scan_iter(match=p + "pipe:*", count=100))
    assert keys == {f"{p}pipe:{i}".encode() for i in range(500)}, len(keys)
    assert r.dbsize() >= 500
    info = r.info()
    assert info["redis_version"], info
    r.close()

# RESP3 specifics: HELLO answers a map, a null is RESP3's null.
r3 = redis.Redis(unix_socket_path=sock, protocol=3)
hello = r3.execute_command("HELLO", "3")
assert hello[b"proto"] == 3 if b"proto" in hello else hello["proto"] == 3, hello
assert r3.get("py3:missing") is None
print("redis-py ok")
