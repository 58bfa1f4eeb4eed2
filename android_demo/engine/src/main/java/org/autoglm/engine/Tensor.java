package org.autoglm.engine;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;

/**
 * A dense row-major tensor of float32 or int64, the two dtypes the ExecuTorch bundle's methods take.
 * Plain Java so the engine runs (and is tested) off Android; ExecuTorchMethodRunner converts it.
 */
public final class Tensor {
  public enum DType {
    FLOAT32,
    INT64
  }

  private final long[] shape;
  private final float[] floats;
  private final long[] longs;

  private Tensor(long[] shape, float[] floats, long[] longs) {
    long n = numel(shape);
    int size = floats != null ? floats.length : longs.length;
    if (n != size) {
      throw new IllegalArgumentException(
          "shape " + Arrays.toString(shape) + " needs " + n + " values, got " + size);
    }
    this.shape = shape.clone();
    this.floats = floats;
    this.longs = longs;
  }

  public static Tensor ofFloats(float[] data, long... shape) {
    return new Tensor(shape, data, null);
  }

  public static Tensor ofLongs(long[] data, long... shape) {
    return new Tensor(shape, null, data);
  }

  public static long numel(long[] shape) {
    long n = 1;
    for (long d : shape) {
      n *= d;
    }
    return n;
  }

  public DType dtype() {
    return floats != null ? DType.FLOAT32 : DType.INT64;
  }

  public long[] shape() {
    return shape.clone();
  }

  public long dim(int i) {
    return shape[i < 0 ? shape.length + i : i];
  }

  public int size() {
    return floats != null ? floats.length : longs.length;
  }

  /** The backing array (not a copy): the engine passes big tensors around without copying. */
  public float[] floats() {
    if (floats == null) {
      throw new IllegalStateException("tensor is int64, not float32");
    }
    return floats;
  }

  public long[] longs() {
    if (longs == null) {
      throw new IllegalStateException("tensor is float32, not int64");
    }
    return longs;
  }

  /** sha256 of the little-endian bytes, the digest golden traces record (autoglm_runtime.trace). */
  public String sha256() {
    ByteBuffer buf =
        ByteBuffer.allocate(size() * (floats != null ? 4 : 8)).order(ByteOrder.LITTLE_ENDIAN);
    if (floats != null) {
      buf.asFloatBuffer().put(floats);
    } else {
      buf.asLongBuffer().put(longs);
    }
    try {
      byte[] d = MessageDigest.getInstance("SHA-256").digest(buf.array());
      StringBuilder sb = new StringBuilder();
      for (byte b : d) {
        sb.append(String.format("%02x", b));
      }
      return sb.toString();
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }

  @Override
  public String toString() {
    return dtype().name().toLowerCase() + Arrays.toString(shape);
  }
}
