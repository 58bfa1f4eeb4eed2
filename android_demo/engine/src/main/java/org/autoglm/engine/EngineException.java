package org.autoglm.engine;

/** A problem with the bundle or the request, said in one line (shown to the user as is). */
public class EngineException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public EngineException(String message) {
    super(message);
  }

  public EngineException(String message, Throwable cause) {
    super(message, cause);
  }
}
