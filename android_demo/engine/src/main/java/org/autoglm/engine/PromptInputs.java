package org.autoglm.engine;

/** Everything prefill needs for one prompt (runtime prompt.py PromptInputs). */
public final class PromptInputs {
  /** The rendered chat prompt. */
  public final String text;
  /** The tokenizer's ids for text, before placeholder expansion. */
  public final long[] tokenIds;
  /** Ids after each image/audio placeholder was repeated to its feature count. */
  public final long[] inputIds;
  /** Per input id: 0 text (audio included), 1 image. */
  public final int[] types;
  /** [3][S] M-RoPE positions. */
  public final long[][] positionIds;
  public final int ropeDelta;
  public final int images;
  public final int audios;

  PromptInputs(
      String text,
      long[] tokenIds,
      long[] inputIds,
      int[] types,
      Positions.Result positions,
      int images,
      int audios) {
    this.text = text;
    this.tokenIds = tokenIds;
    this.inputIds = inputIds;
    this.types = types;
    this.positionIds = positions.ids;
    this.ropeDelta = positions.ropeDelta;
    this.images = images;
    this.audios = audios;
  }

  public int length() {
    return inputIds.length;
  }
}
