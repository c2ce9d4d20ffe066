"""Building blocks shared by the Thinker and Talker decoders."""
