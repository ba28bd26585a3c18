import sys
sys.path.insert(0, "/work/scratch")
import oracle
sys.exit(oracle.main())
