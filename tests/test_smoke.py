from conftest import RawClient


def test_echo_round_trip(client: RawClient) -> None:
    job = client.submit("echo", {"value": {"a": [1, 2]}})
    done = client.wait(job["job_id"])
    assert done["status"] == "completed"
    assert done["result"] == {"a": [1, 2]}
