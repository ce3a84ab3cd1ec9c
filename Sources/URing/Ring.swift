import CURing
