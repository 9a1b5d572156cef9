"""Phone calls: Twilio Media Streams as a wire of the session, and the TwiML that opens them.

docs/phone.md is the reference: the console steps, who a call acts as, what each message does.
"""

from .twiml import STREAM_PATH, VOICE_PATH, router
from .wire import TwilioWire

__all__ = ["STREAM_PATH", "VOICE_PATH", "TwilioWire", "router"]
