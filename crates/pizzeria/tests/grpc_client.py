"""A gRPC client that tabgrab did not write: Python's grpcio calls the pizzeria's payment.

Usage: grpc_client.py PROTO_DIR HOST:PORT

Generates the stubs from the checked-in proto/payment.proto with grpc_tools.protoc into a
temporary directory, then charges a good card (expects the amount back), a declined card
(expects FAILED_PRECONDITION with the rejection's JSON in the details) and a malformed
order id (expects INVALID_ARGUMENT). Prints one line per check; exits 1 on any mismatch.
"""

import json
import sys
import tempfile
import uuid

import grpc
from grpc_tools import protoc


def main() -> int:
    proto_dir, target = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="pizzeria-stubs-")
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "payment.proto"]
    )
    if code != 0:
        print(f"protoc failed with {code}")
        return 1
    sys.path.insert(0, out)
    import payment_pb2
    import payment_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = payment_pb2_grpc.PaymentStub(channel)
        order_id = str(uuid.uuid4())
        reply = stub.ChargeCard(
            payment_pb2.ChargeCardRequest(order_id=order_id, amount_cents=2100, card="**** 4242"),
            timeout=5,
        )
        assert reply.order_id == order_id, reply
        assert reply.amount_cents == 2100, reply
        print(f"charged {reply.amount_cents} for {reply.order_id}")

        try:
            stub.ChargeCard(
                payment_pb2.ChargeCardRequest(order_id=str(uuid.uuid4()), amount_cents=900, card="**** 0000"),
                timeout=5,
            )
            print("a declined card was charged")
            return 1
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
            print(f"declined: {e.code().name}: {e.details()}")

        try:
            stub.ChargeCard(payment_pb2.ChargeCardRequest(order_id="not-a-uuid", amount_cents=1, card="x"), timeout=5)
            print("a malformed order id was accepted")
            return 1
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
            print(f"malformed: {e.code().name}: {e.details()}")

        refund = stub.RefundPayment(payment_pb2.RefundPaymentRequest(order_id=order_id), timeout=5)
        assert refund.amount_cents == 2100, refund
        print(f"refunded {refund.amount_cents}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
