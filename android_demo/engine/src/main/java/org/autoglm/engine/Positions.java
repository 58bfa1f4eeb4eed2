package org.autoglm.engine;

import java.util.List;

/**
 * GLM-4.1V 3-plane M-RoPE position ids, a port of runtime/autoglm_runtime/positions.py (itself
 * transformers' get_rope_index): a run of text tokens advances all three planes together; a run of
 * image tokens gets a (t, h, w) grid starting at the running position, which then advances by
 * max(h, w) / merge, not by the number of image tokens.
 */
public final class Positions {
  public static final int TEXT = 0;
  public static final int IMAGE = 1;

  /** [3][S] positions plus ropeDelta = max position + 1 - S (decode continues at cache + delta). */
  public static final class Result {
    public final long[][] ids;
    public final int ropeDelta;

    Result(long[][] ids, int ropeDelta) {
      this.ids = ids;
      this.ropeDelta = ropeDelta;
    }
  }

  private Positions() {}

  /**
   * @param types per token 0 text (audio tokens are text), 1 image
   * @param grids one (t, h, w) grid per image in patches (before the merge), in prompt order
   */
  public static Result ropeIndex(int[] types, List<int[]> grids, int mergeSize) {
    int n = types.length;
    long[][] ids = new long[3][n];
    long pos = 0;
    long max = -1;
    int used = 0;
    int i = 0;
    while (i < n) {
      int kind = types[i];
      int j = i;
      while (j < n && types[j] == kind) {
        j++;
      }
      int length = j - i;
      if (kind == TEXT) {
        for (int k = 0; k < length; k++) {
          ids[0][i + k] = ids[1][i + k] = ids[2][i + k] = pos + k;
        }
        pos += length;
      } else if (kind == IMAGE) {
        if (used >= grids.size()) {
          throw new EngineException(
              "prompt has more image runs than the " + grids.size() + " image grid(s) given");
        }
        int[] g = grids.get(used++);
        int t = g[0];
        int h = g[1] / mergeSize;
        int w = g[2] / mergeSize;
        if (t * h * w != length) {
          throw new EngineException(
              "image " + used + " has " + length + " placeholder tokens but its grid needs "
                  + (t * h * w));
        }
        int k = i;
        for (int tt = 0; tt < t; tt++) {
          for (int hh = 0; hh < h; hh++) {
            for (int ww = 0; ww < w; ww++) {
              ids[0][k] = pos + tt;
              ids[1][k] = pos + hh;
              ids[2][k] = pos + ww;
              k++;
            }
          }
        }
        pos += Math.max(g[1], g[2]) / mergeSize;
      } else {
        throw new EngineException("token type " + kind + " is not supported (0 text, 1 image)");
      }
      i = j;
    }
    if (used != grids.size()) {
      throw new EngineException(
          grids.size() + " image grid(s) given but the prompt has " + used + " image(s)");
    }
    for (int p = 0; p < 3; p++) {
      for (int k = 0; k < n; k++) {
        max = Math.max(max, ids[p][k]);
      }
    }
    int delta = n == 0 ? 0 : (int) (max + 1 - n);
    return new Result(ids, delta);
  }

  /** [3][count] positions of count new tokens after cachePosition cached ones (text on all planes). */
  public static long[][] decode(int cachePosition, int ropeDelta, int count) {
    long[][] ids = new long[3][count];
    for (int k = 0; k < count; k++) {
      long v = (long) cachePosition + k + ropeDelta;
      ids[0][k] = ids[1][k] = ids[2][k] = v;
    }
    return ids;
  }

  /** Row-major [3 * S] copy, the layout of the decoder's position_ids input. */
  public static long[] flatten(long[][] ids, int from, int to) {
    int s = to - from;
    long[] out = new long[3 * s];
    for (int p = 0; p < 3; p++) {
      System.arraycopy(ids[p], from, out, p * s, s);
    }
    return out;
  }
}
