package org.autoglm.engine;

import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

/**
 * Token ids to text deltas as they arrive, never splitting a UTF-8 character (runtime
 * tokenizer.py StreamDecoder): Chinese characters are 3 bytes and often span two tokens.
 */
public final class StreamDecoder {
  private final Vocabulary vocab;
  private final boolean skipSpecial;
  private final CharsetDecoder utf8 =
      StandardCharsets.UTF_8
          .newDecoder()
          .onMalformedInput(CodingErrorAction.REPLACE)
          .onUnmappableCharacter(CodingErrorAction.REPLACE);
  private ByteBuffer pending = ByteBuffer.allocate(0);

  public StreamDecoder(Vocabulary vocab, boolean skipSpecialTokens) {
    this.vocab = vocab;
    this.skipSpecial = skipSpecialTokens;
  }

  /** The complete characters this token finishes ("" while a character is still incomplete). */
  public String push(int tokenId) {
    if (skipSpecial && vocab.isSpecial(tokenId)) {
      return "";
    }
    byte[] bytes = vocab.tokenBytes(tokenId);
    ByteBuffer in = ByteBuffer.allocate(pending.remaining() + bytes.length);
    in.put(pending).put(bytes).flip();
    CharBuffer out = CharBuffer.allocate(in.remaining() * 2 + 2);
    utf8.decode(in, out, false); // leaves an incomplete trailing sequence in `in`
    pending = in.slice();
    out.flip();
    return out.toString();
  }

  /** Flushes a dangling partial character as U+FFFD. */
  public String finish() {
    CharBuffer out = CharBuffer.allocate(pending.remaining() * 2 + 2);
    utf8.decode(pending, out, true);
    utf8.flush(out);
    utf8.reset();
    pending = ByteBuffer.allocate(0);
    out.flip();
    return out.toString();
  }
}
