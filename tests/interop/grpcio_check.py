"""Interop with gRPC's C core (Python grpcio): concurrent Checks against a running checkpoint.

Run by tests/interop.rs as `.venv/bin/python tests/interop/grpcio_check.py HOST:PORT`, against a
checkpoint in trust mode (TRUST_MIA_USER_HEADERS=true) whose rule file is

    "/private": GET, expression "true", public false
    "/admin":   ALL, expression "groups.admin", public false

(and no other key, so "/nothing/..." has no rule).

No .proto file is read or compiled: the CheckRequest and CheckResponse classes are built from the
descriptors the server's reflection service returns. Then CHECKS Checks are started at once on
one channel (all in flight before the first answer is read), mixing four kinds of request, half
of them with the `headers` map and half with `header_map` pairs (what proxyless gRPC clients
send). Each request carries its own user, groups and properties, so an answer delivered to the
wrong call is a mismatch too.

Prints one line per mismatch and a summary line; exits 1 on any mismatch, 2 when the server
cannot be reached or described, 1 (with a message) when a package is missing.
"""

import argparse
import json
import sys

try:
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )
except ImportError as missing:
    sys.exit(f"grpcio: {missing}: run scripts/setup.sh (it installs grpcio, grpcio-reflection and protobuf into .venv)")

SERVICE = "envoy.service.auth.v3.Authorization"
OVERWRITE = "OVERWRITE_IF_EXISTS_OR_ADD"
IDENTITY_HEADERS = ("miauserid", "miausergroups", "miauserproperties")

# kind -> (google.rpc code, HTTP status of the denial; None for an allow)
EXPECTED = {
    "allowed": (0, None),
    "unauthenticated": (16, 401),
    "forbidden": (7, 403),
    "not_found": (5, 404),
}
KINDS = list(EXPECTED)


def request_for(i):
    """The i-th request: (kind, method, path, headers, the user headers expected upstream)."""
    kind = KINDS[i % len(KINDS)]
    user = {
        "miauserid": f"user-{i}",
        "miausergroups": f"staff,team-{i}",
        "miauserproperties": json.dumps({"n": i}, separators=(",", ":")),
    }
    headers = {"x-request-id": f"req-{i}", ":authority": "interop.test"}
    if kind == "allowed":
        return kind, "GET", f"/private?i={i}", {**headers, **user}, user
    if kind == "unauthenticated":
        return kind, "GET", f"/private?i={i}", headers, None
    if kind == "forbidden":
        return kind, "POST", f"/admin/{i}", {**headers, **user}, None
    return kind, "GET", f"/nothing/{i}", {**headers, **user}, None


def build(check_request, i):
    kind, method, path, headers, upstream = request_for(i)
    message = check_request()
    http = message.attributes.request.http
    http.method = method
    http.path = path
    if i % 2 == 0:
        for name, value in headers.items():
            http.headers[name] = value
    else:
        for name, value in headers.items():
            http.header_map.headers.add(key=name, raw_value=value.encode())
    return kind, upstream, message


def mismatches(kind, upstream, response):
    """What differs between `response` and the documented answer for `kind`."""
    want_code, want_http = EXPECTED[kind]
    problems = []
    if response.status.code != want_code:
        problems.append(f"status.code {response.status.code}, want {want_code}")
    if want_http is None:
        if response.HasField("denied_response"):
            problems.append("a denied_response on an allow")
        ok = response.ok_response
        got = {}
        for option in ok.headers:
            name = option.header.key
            if name in got:
                problems.append(f"header {name} set twice")
            got[name] = option.header.value
            action = type(option).HeaderAppendAction.Name(option.append_action)
            if action != OVERWRITE:
                problems.append(f"header {name} append_action {action}, want {OVERWRITE}")
        for name in IDENTITY_HEADERS:
            if got.get(name) != upstream[name]:
                problems.append(f"upstream {name} {got.get(name)!r}, want {upstream[name]!r}")
        for name in ok.headers_to_remove:
            if name in got:
                problems.append(f"{name} both set and removed")
    else:
        denied = response.denied_response
        if response.HasField("ok_response"):
            problems.append("an ok_response on a deny")
        if denied.status.code != want_http:
            problems.append(f"denied_response.status {denied.status.code}, want {want_http}")
        try:
            body = json.loads(denied.body)
        except ValueError:
            body = {}
            problems.append(f"body is not JSON: {denied.body!r}")
        if body.get("statusCode") != want_http:
            problems.append(f"body statusCode {body.get('statusCode')!r}, want {want_http}")
        names = {option.header.key: option.header.value for option in denied.headers}
        if kind == "unauthenticated" and names.get("www-authenticate") != "Bearer":
            problems.append(f"www-authenticate {names.get('www-authenticate')!r}, want 'Bearer'")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="checkpoint's gRPC address, HOST:PORT")
    parser.add_argument("--checks", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds, per call")
    args = parser.parse_args()

    with grpc.insecure_channel(args.address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
            pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
            check = pool.FindServiceByName(SERVICE).methods_by_name["Check"]
        except (grpc.FutureTimeoutError, grpc.RpcError, KeyError) as error:
            print(f"grpcio: cannot describe {SERVICE} through reflection: {error!r}")
            return 2
        check_request = message_factory.GetMessageClass(check.input_type)
        check_response = message_factory.GetMessageClass(check.output_type)
        call = channel.unary_unary(
            f"/{SERVICE}/{check.name}",
            request_serializer=check_request.SerializeToString,
            response_deserializer=check_response.FromString,
        )

        requests = [build(check_request, i) for i in range(args.checks)]
        # Every call is in flight before any answer is read.
        futures = [call.future(message, timeout=args.timeout) for _, _, message in requests]
        counts = {kind: 0 for kind in KINDS}
        bad = 0
        for i, ((kind, upstream, _), future) in enumerate(zip(requests, futures)):
            try:
                problems = mismatches(kind, upstream, future.result())
            except grpc.RpcError as error:
                problems = [f"gRPC error {error.code()}: {error.details()}"]
            if problems:
                bad += 1
                print(f"mismatch: check {i} ({kind}): {'; '.join(problems)}")
            else:
                counts[kind] += 1

    summary = ", ".join(f"{kind} {counts[kind]}" for kind in KINDS)
    print(f"grpcio {grpc.__version__}: {args.checks} checks on one channel: {summary}, mismatches {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
