package org.autoglm.engine;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;

import java.util.Arrays;
import java.util.Collections;
import org.junit.Test;

/** M-RoPE positions worked out by hand from transformers' get_rope_index rules. */
public class PositionsTest {
  @Test
  public void textOnlyRunsOnAllPlanes() {
    Positions.Result r = Positions.ropeIndex(new int[] {0, 0, 0}, Collections.emptyList(), 2);
    for (int p = 0; p < 3; p++) {
      assertArrayEquals(new long[] {0, 1, 2}, r.ids[p]);
    }
    assertEquals(0, r.ropeDelta);
  }

  @Test
  public void imageGridThenTextContinuesAfterMaxSide() {
    // 2 text, a 1x4x6 patch grid (merge 2 -> 2x3 = 6 tokens), 2 text.
    int[] types = {0, 0, 1, 1, 1, 1, 1, 1, 0, 0};
    Positions.Result r = Positions.ropeIndex(types, Collections.singletonList(new int[] {1, 4, 6}), 2);
    assertArrayEquals(new long[] {0, 1, 2, 2, 2, 2, 2, 2, 5, 6}, r.ids[0]); // temporal
    assertArrayEquals(new long[] {0, 1, 2, 2, 2, 3, 3, 3, 5, 6}, r.ids[1]); // height
    assertArrayEquals(new long[] {0, 1, 2, 3, 4, 2, 3, 4, 5, 6}, r.ids[2]); // width
    assertEquals(7 - 10, r.ropeDelta); // max 6 + 1 - 10 tokens
    assertArrayEquals(new long[] {7, 7, 7}, column(Positions.decode(10, r.ropeDelta, 1)));
  }

  @Test
  public void twoImagesSeparatedByText() {
    int[] types = {1, 1, 0, 1, 1};
    Positions.Result r = Positions.ropeIndex(types, Arrays.asList(new int[] {1, 2, 4}, new int[] {1, 2, 4}), 2);
    assertArrayEquals(new long[] {0, 0, 2, 3, 3}, r.ids[0]);
    assertArrayEquals(new long[] {0, 1, 2, 3, 4}, r.ids[2]);
  }

  @Test(expected = EngineException.class)
  public void placeholderCountMustMatchGrid() {
    Positions.ropeIndex(new int[] {0, 1, 1, 1}, Collections.singletonList(new int[] {1, 4, 4}), 2);
  }

  private static long[] column(long[][] ids) {
    return new long[] {ids[0][0], ids[1][0], ids[2][0]};
  }
}
