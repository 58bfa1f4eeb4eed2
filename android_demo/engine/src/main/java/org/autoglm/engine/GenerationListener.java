package org.autoglm.engine;

/** Streaming callbacks, called on the generating thread. */
public interface GenerationListener {
  /** Every sampled token, EOS included. */
  default void onToken(int tokenId) {}

  /** Complete characters as they become available (never half a UTF-8 character). */
  default void onText(String delta) {}
}
