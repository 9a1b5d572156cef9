"""The count of sockets per address that have not started a session (services/gateway/doorway.py)."""

from services.gateway.doorway import Doorway


def test_an_address_has_room_for_so_many_waiting_sockets_and_each_that_leaves_makes_room():
    door = Doorway(per_address=2)
    with door.waiting("10.0.0.1") as first, door.waiting("10.0.0.1") as second:
        with door.waiting("10.0.0.1") as third, door.waiting("10.0.0.2") as elsewhere:
            assert (first, second, third, elsewhere) == (True, True, False, True)
    with door.waiting("10.0.0.1") as again:
        assert again
    assert not door._waiting  # nothing is kept for addresses with none waiting
